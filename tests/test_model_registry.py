"""Models registered by recipe packages load by name in a fresh process (an export of a
TOPLight or CSAN run must load without importing the recipe first)."""

import subprocess
import sys

from hfrjax.models import registry


def test_recipe_models_register_on_first_use_in_a_fresh_process():
    names = sorted(registry.RECIPE_MODELS)
    code = (
        "import sys; from hfrjax.models import get_model, registry\n"
        "assert not any(m.startswith('hfrjax.recipes') for m in sys.modules)\n"
        f"for n in {names!r}:\n"
        "    get_model(n)\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


def test_unknown_model_is_named():
    import pytest

    with pytest.raises(KeyError, match="unknown model 'no_such_net'"):
        registry.get_model("no_such_net")
