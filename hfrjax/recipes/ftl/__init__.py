"""Recipe: FTL — feature transfer for under-represented classes (Yin et al.).

Host-side statistics (pure functions, state as arrays): `statistics` holds UpdateStats —
class centres with flips and a yaw bound (Eq. 5), the shared covariance and its PCA basis
(Eq. 6), the hard-sample list — and Transfer (Eq. 7).
"""
