"""What a runtime offers and what an attack needs: the one vocabulary both sides share."""

from __future__ import annotations

import enum


class Capability(enum.IntEnum):
    """Gradients > scores > decisions: a runtime offers one, an attack declares the least it needs."""

    DECISIONS = 1
    SCORES = 2
    GRADIENTS = 3
