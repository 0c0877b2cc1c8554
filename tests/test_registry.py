import pytest

from robustdeploy.errors import RobustDeployError
from robustdeploy.registry import Registry


def test_create_drops_none_and_suggests_close_names():
    reg: Registry = Registry("attack")

    @reg.register("pgd")
    def make(steps: int = 40):
        return steps

    assert reg.create("pgd", steps=None) == 40
    assert reg.create("pgd", steps=3) == 3
    with pytest.raises(RobustDeployError, match="unknown attack 'pgdd'; did you mean 'pgd'"):
        reg.create("pgdd")
    with pytest.raises(ValueError):
        reg.register("pgd")(make)
