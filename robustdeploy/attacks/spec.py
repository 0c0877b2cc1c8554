"""An attack named the way users name it (`apgd:dlr`, knobs as key=value), created with checked knobs."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from robustdeploy.attacks.base import ATTACKS, Attack
from robustdeploy.errors import RobustDeployError


@dataclass(frozen=True)
class AttackSpec:
    """An attack of a cascade: registry name, knobs, and the label it is reported under (`apgd:dlr`)."""

    name: str = "pgd"
    params: dict = field(default_factory=dict)
    label: str = ""

    @classmethod
    def parse(cls, text: str, params: dict | None = None) -> AttackSpec:
        """`name` or `name:loss` (e.g. `apgd:dlr`), plus shared knobs."""
        name, _, loss = text.partition(":")
        ATTACKS.get(name)  # unknown names fail here, with a suggestion
        extra = {"loss": loss} if loss else {}
        return cls(name, {**(params or {}), **extra}, text)

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


def make_attack(spec: AttackSpec, seed: int) -> Attack:
    """Instantiate by name; every knob is checked against the attack's declared fields and types."""
    cls = ATTACKS.get(spec.name)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    params = {"seed": seed} if "seed" in known else {}
    for key, value in spec.params.items():
        if key not in known:
            raise RobustDeployError(f"attack {spec.name!r} has no option {key!r}; it takes "
                                    f"{', '.join(sorted(known))}")
        params[key] = _coerce(spec.name, key, value, hints.get(key))
    return cls(**params)


def _coerce(attack: str, key: str, value: object, hint: object) -> object:
    kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    if value is None and type(None) in typing.get_args(hint):
        return None
    for kind in kinds:
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind in (int, bool, str) and type(value) is kind:
            return value
    words = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
    names = " or ".join(words.get(k, getattr(k, "__name__", str(k))) for k in kinds)
    raise RobustDeployError(f"attack {attack!r} option {key!r} takes {names}, not {value!r}")


def takes(name: str) -> set[str]:
    """The knobs attack `name` takes."""
    return {f.name for f in dataclasses.fields(ATTACKS.get(name)) if f.init}


def cascade(texts: tuple[str, ...], shared: dict) -> tuple[AttackSpec, ...]:
    """Specs for `--attack A --attack B ...`: each shared knob goes to every attack that takes it, and a knob
    that none of them takes is an error rather than silently dropped."""
    names = [t.partition(":")[0] for t in texts]
    for name in names:
        ATTACKS.get(name)
    unused = [k for k in shared if not any(k in takes(n) for n in names)]
    if unused:
        offered = "; ".join(f"{n} takes {', '.join(sorted(takes(n) - {'seed'}))}" for n in dict.fromkeys(names))
        raise RobustDeployError(f"no attack of {', '.join(texts)} takes {', '.join(unused)} ({offered})")
    return tuple(AttackSpec.parse(t, {k: v for k, v in shared.items() if k in takes(n)}) for t, n in zip(texts, names))
