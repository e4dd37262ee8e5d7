"""The checkpoint and ``repr`` boilerplate shared by methods (``Weighting``) and Gram sources.

:class:`Stateful` gives an object torch-style ``state_dict()`` / ``load_state_dict()`` (empty for
a stateless object, which refuses a non-empty state) and a ``repr`` listing its public attributes.
Stateful subclasses override the two state methods.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Stateful"]


class Stateful:
    """Mixin: ``state_dict() -> {}``, ``load_state_dict({})`` and ``Name(attr=value, ...)``."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (empty for a stateless object)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` (a stateless object accepts only
        ``{}``).
        """
        if state_dict:
            raise ValueError(
                f"{type(self).__name__} is stateless but got state {sorted(state_dict)}; pass the "
                "state_dict() of the same kind of object."
            )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
