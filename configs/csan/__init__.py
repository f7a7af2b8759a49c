"""CSAN configs: RegDB, ARL-VTF, the synthetic scale, and the synthetic Table I / λ sweep."""
