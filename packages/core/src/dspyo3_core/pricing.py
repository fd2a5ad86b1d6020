"""Model prices: :class:`PricingTable` and the process-wide :data:`PRICING` that LMs and cost tracking price
calls from.

Part of core's lowest layer: it imports neither DSPy nor any other dspyo3 module (LiteLLM's bundled price map is
read as a JSON file, without importing LiteLLM). ``dspyo3_core.native_lm`` re-exports both names.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PRICING", "PricingTable"]


class PricingTable:
    """USD per million tokens by model: your overrides first, then LiteLLM's bundled price map (read from the
    installed ``litellm`` package's JSON file, without importing LiteLLM or touching the network).

    >>> PRICING.set("openai/my-finetune", input_per_mtok=0.3, output_per_mtok=1.2)
    """

    def __init__(self) -> None:
        self._overrides: dict[str, tuple[float, float]] = {}
        self._litellm: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[float, float] | None] = {}
        self.looked_up: Mapping[str, tuple[float, float] | None] = self._memo
        """Prices found so far (model -> price, or None if it has none): ``looked_up.get(model)`` is a lock-free
        read for hot paths; a model missing here needs :meth:`price`."""

    def set(self, model: str, *, input_per_mtok: float, output_per_mtok: float) -> None:
        """Price ``model`` (as written in ``NativeLM(model)``, or without its provider prefix)."""
        if input_per_mtok < 0 or output_per_mtok < 0:
            raise ValueError("prices must be >= 0 USD per million tokens")
        self._overrides[model] = (float(input_per_mtok), float(output_per_mtok))
        self._memo.clear()

    def _litellm_map(self) -> dict[str, Any]:
        if self._litellm is not None:
            return self._litellm
        with self._lock:
            if self._litellm is None:
                loaded: dict[str, Any] = {}
                spec = importlib.util.find_spec("litellm")
                for location in (spec.submodule_search_locations or []) if spec else []:
                    path = Path(location) / "model_prices_and_context_window_backup.json"
                    if path.is_file():
                        loaded = json.loads(path.read_text())
                        break
                self._litellm = loaded  # published whole: the lock-free read above never sees it half-loaded
            return self._litellm

    def price(self, model: str) -> tuple[float, float] | None:
        """``(input, output)`` USD per million tokens for ``model``, or None if unknown."""
        try:
            return self._memo[model]
        except KeyError:
            pass
        found = self._lookup(model)
        if len(self._memo) < 10_000:
            self._memo[model] = found
        return found

    def _lookup(self, model: str) -> tuple[float, float] | None:
        bare = model.split("/", 1)[1] if "/" in model else model
        for name in (model, bare):
            if name in self._overrides:
                return self._overrides[name]
        table = self._litellm_map()
        for name in (model, bare):
            entry = table.get(name)
            if isinstance(entry, dict) and "input_cost_per_token" in entry:
                return (float(entry["input_cost_per_token"]) * 1e6,
                        float(entry.get("output_cost_per_token", 0.0)) * 1e6)
        return None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for one call, or None if the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


PRICING = PricingTable()
"""The process-wide pricing table NativeLM uses unless given ``pricing=``."""
