"""DSPy's cache contract, run against ``dspy.clients.Cache`` and ``TieredCache`` alike: every test takes the class
as a parameter and makes the same assertions for both (constructor, tier combinations, copies on hit, keys,
``request_cache``, ``reset_memory_cache``, ``save_memory_cache`` / ``load_memory_cache`` in both directions).
What only ``TieredCache`` does differently (a memory cache file is read with a restricted unpickler) is at the
end."""

from __future__ import annotations

import asyncio
import math
import subprocess
from pathlib import Path
from typing import Any

import dspy
import pydantic
import pytest
from dspy.clients.cache import Cache, request_cache

from dspyo3_production.cache import TieredCache

CLASSES = [Cache, TieredCache]
REQUEST = {"model": "openai/x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0}


class Answer(pydantic.BaseModel):
    text: str


class WithUsage:
    """A response object as provider SDKs return them: ``usage`` is cleared on a hit."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.usage = {"prompt_tokens": 3}


def model_response(text: str) -> Any:
    from litellm import ModelResponse

    return ModelResponse(model="gpt-4o-mini", choices=[{"message": {"role": "assistant", "content": text}}],
                         usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})


@pytest.fixture(params=CLASSES, ids=lambda cls: cls.__name__)
def cls(request: pytest.FixtureRequest) -> type[Cache]:
    return request.param  # type: ignore[no-any-return]


def use(cache: Cache) -> Cache:
    """Make ``cache`` ``dspy.cache`` (the conftest puts DSPy's own back after the test)."""
    dspy.cache = cache
    return cache


@pytest.mark.parametrize(("disk", "memory"), [(False, False), (False, True), (True, False), (True, True)])
def test_tier_combinations(cls: type[Cache], disk: bool, memory: bool, tmp_path: Path) -> None:
    cache = cls(disk, memory, str(tmp_path / "disk") if disk else None)
    key = cache.cache_key(REQUEST)
    assert cache.get(REQUEST) is None
    cache.put(REQUEST, {"outputs": ["x"]})
    stored = disk or memory
    assert cache.get(REQUEST) == ({"outputs": ["x"]} if stored else None)
    assert (key in cache) is stored
    assert (key in cache.memory_cache) is memory
    cache.reset_memory_cache()
    assert cache.get(REQUEST) == ({"outputs": ["x"]} if disk else None)
    if disk and memory:  # a disk hit is copied into memory
        assert key in cache.memory_cache


def test_constructor_limits(cls: type[Cache], tmp_path: Path) -> None:
    cls(False, False, None, memory_max_entries=0)  # no memory tier: its limit is not looked at
    cls(False, False, None, memory_max_entries=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_max_entries"):
        cls(False, True, None, memory_max_entries=0)
    with pytest.raises(ValueError, match="memory_max_entries"):
        cls(False, True, None, memory_max_entries=None)  # type: ignore[arg-type]
    unbounded = cls(False, True, None, memory_max_entries=math.inf)  # type: ignore[arg-type]
    unbounded.put(REQUEST, {"outputs": ["x"]})
    assert unbounded.get(REQUEST) == {"outputs": ["x"]}
    no_dir = cls(True, False, None)  # disk without a directory: a temporary one
    no_dir.put(REQUEST, {"outputs": ["on disk"]})
    assert no_dir.get(REQUEST) == {"outputs": ["on disk"]}
    small = cls(False, True, None, memory_max_entries=2)
    for i in range(3):
        small.put({"i": i}, i + 1)
    assert [small.get({"i": i}) for i in range(3)] == [None, 2, 3]  # least recently used goes first
    restricted = cls(True, False, str(tmp_path / "r"), restrict_pickle=True, safe_types=[Answer])
    restricted.put(REQUEST, Answer(text="ok"))
    assert restricted.get(REQUEST) == Answer(text="ok")


def test_hits_are_fresh_copies_with_usage_cleared(cls: type[Cache]) -> None:
    cache = cls(False, True, None)
    cache.put(REQUEST, {"outputs": ["a"]})
    cache.put({**REQUEST, "n": 2}, WithUsage("b"))
    for _ in range(2):
        hit = cache.get(REQUEST)
        hit["outputs"].append("mutated")
        assert cache.get(REQUEST) == {"outputs": ["a"]}
        obj = cache.get({**REQUEST, "n": 2})
        assert (obj.text, obj.usage, obj.cache_hit) == ("b", {}, True)
        obj.text = "mutated"


def test_put_without_memory_still_reaches_disk(cls: type[Cache], tmp_path: Path) -> None:
    cache = cls(True, True, str(tmp_path))
    cache.put(REQUEST, {"outputs": ["x"]}, enable_memory_cache=False)
    assert cache.cache_key(REQUEST) not in cache.memory_cache
    assert cache.get(REQUEST) == {"outputs": ["x"]}
    memory_only = cls(False, True, None)
    memory_only.put(REQUEST, {"outputs": ["x"]}, enable_memory_cache=False)
    assert memory_only.get(REQUEST) is None


def test_keys_ignore_listed_args_and_encode_models_and_callables(cls: type[Cache]) -> None:
    cache = cls(False, True, None)
    reference = Cache(False, True, None)

    def scorer(x: int) -> int:
        return x

    requests: list[dict[str, Any]] = [
        REQUEST,
        {**REQUEST, "response_format": Answer},
        {**REQUEST, "prediction": Answer(text="x")},
        {**REQUEST, "nested": {"fn": scorer, "model": Answer(text="y")}},
        {**REQUEST, "fn": len},
    ]
    keys = [cache.cache_key(r) for r in requests]
    assert keys == [reference.cache_key(r) for r in requests]
    assert len(set(keys)) == len(keys)
    ignored = ["api_key", "api_base"]
    cache.put({**REQUEST, "api_key": "sk-a", "api_base": "http://a"}, {"outputs": ["shared"]}, ignored)
    assert cache.get({**REQUEST, "api_key": "sk-b"}, ignored) == {"outputs": ["shared"]}
    assert cache.get({**REQUEST, "api_key": "sk-b"}) is None  # not ignored: a different key
    unkeyable = {**REQUEST, "thing": object()}  # orjson cannot encode it: not cached, never an error
    cache.put(unkeyable, {"outputs": ["x"]})
    assert cache.get(unkeyable) is None


def test_request_cache_decorator(cls: type[Cache]) -> None:
    use(cls(False, True, None))
    calls: list[Any] = []

    @request_cache()
    def compute(prompt: str, api_key: str = "") -> dict[str, Any]:
        calls.append(prompt)
        return {"echo": prompt, "n": len(calls)}

    @request_cache(cache_arg_name="request")
    def complete(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(request["q"])
        return {"answer": request["q"].upper()}

    @request_cache(enable_memory_cache=False)
    def uncached(prompt: str) -> str:
        calls.append(prompt)
        return prompt

    @request_cache()
    async def acompute(prompt: str) -> str:
        calls.append(prompt)
        return prompt * 2

    assert compute("a", api_key="k1") == compute("a", api_key="k2") == {"echo": "a", "n": 1}  # api_key ignored
    assert compute("b") == {"echo": "b", "n": 2}
    assert complete(request={"q": "x"}) == complete(request={"q": "x"}) == {"answer": "X"}
    assert uncached("u") == uncached("u") == "u"  # never stored in memory: computed both times
    assert asyncio.run(acompute("z")) == asyncio.run(acompute("z")) == "zz"
    assert calls == ["a", "b", "x", "u", "u", "z"]
    dspy.cache.reset_memory_cache()
    assert compute("a") == {"echo": "a", "n": 7}


def test_reset_memory_cache(cls: type[Cache]) -> None:
    cache = cls(False, True, None)
    cache.put(REQUEST, {"outputs": ["x"]})
    cache.get(REQUEST)
    cache.reset_memory_cache()
    assert cache.get(REQUEST) is None and len(cache.memory_cache) == 0
    cache.put(REQUEST, {"outputs": ["y"]})
    assert cache.get(REQUEST) == {"outputs": ["y"]}
    cls(False, False, None).reset_memory_cache()  # no memory tier: nothing to do


@pytest.mark.parametrize("loader", CLASSES, ids=lambda c: f"loaded-by-{c.__name__}")
def test_memory_cache_files_move_between_both_classes(cls: type[Cache], loader: type[Cache], tmp_path: Path) -> None:
    saver = cls(False, True, None)
    values = {"plain": {"outputs": ["a"], "usage": {"prompt_tokens": 1}}, "list": [1, "two", None],
              "response": model_response("from a provider")}
    for name, value in values.items():
        saver.put({**REQUEST, "which": name}, value)
        saver.get({**REQUEST, "which": name})  # a hit first: TieredCache keeps plain data in another form after it
    path = tmp_path / "memory.pkl"
    saver.save_memory_cache(str(path))

    target = loader(False, True, None)
    with pytest.raises(ValueError, match="allow_pickle"):
        target.load_memory_cache(str(path))
    target.load_memory_cache(str(path), allow_pickle=True)
    assert target.get({**REQUEST, "which": "plain"}) == values["plain"]
    assert target.get({**REQUEST, "which": "list"}) == values["list"]
    response = target.get({**REQUEST, "which": "response"})
    assert response.choices[0].message.content == "from a provider"
    assert response.cache_hit and not response.usage
    target.put({**REQUEST, "which": "new"}, {"outputs": ["after loading"]})  # the loaded tier takes new entries
    assert target.get({**REQUEST, "which": "new"}) == {"outputs": ["after loading"]}
    target.reset_memory_cache()
    assert target.get({**REQUEST, "which": "plain"}) is None


def test_memory_cache_files_without_a_memory_tier(cls: type[Cache], tmp_path: Path) -> None:
    path = tmp_path / "memory.pkl"
    cache = cls(False, False, None)
    cache.save_memory_cache(str(path))
    assert not path.exists()
    with pytest.raises(ValueError, match="allow_pickle"):
        cache.load_memory_cache(str(path))
    cache.load_memory_cache(str(path), allow_pickle=True)  # nothing to load into: not even opened


# -- TieredCache only: a memory cache file is read without running code ------------------------------------------

class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (subprocess.call, (["touch", str(self.marker)],))


def test_tiered_cache_reads_memory_files_with_a_restricted_unpickler(tmp_path: Path) -> None:
    import cloudpickle
    from cachetools import LRUCache

    marker = tmp_path / "ran"
    planted = LRUCache(maxsize=10)
    planted["k"] = Exploit(marker)
    path = tmp_path / "planted.pkl"
    path.write_bytes(cloudpickle.dumps(planted))
    cache = TieredCache(False, True, None)
    cache.put(REQUEST, {"outputs": ["kept"]})
    with pytest.raises(ValueError, match=r"planted\.pkl.*subprocess\.call.*safe_types"):
        cache.load_memory_cache(str(path), allow_pickle=True)
    assert not marker.exists()
    assert cache.get(REQUEST) == {"outputs": ["kept"]}  # a refused file leaves the tier as it was

    answers = LRUCache(maxsize=10)
    answers["k"] = Answer(text="mine")
    path.write_bytes(cloudpickle.dumps(answers))
    with pytest.raises(ValueError, match="Answer"):
        cache.load_memory_cache(str(path), allow_pickle=True)
    trusting = TieredCache(False, True, None, safe_types=[Answer])
    trusting.load_memory_cache(str(path), allow_pickle=True)
    assert trusting.memory_cache.get("k") == Answer(text="mine")

    for content, problem in ((b"\x80\x05K\x01.", "not a memory cache"), (b"\x80\x05]\x94(K", "pickle"),
                             (b"garbage", "pickle")):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=problem):
            cache.load_memory_cache(str(path), allow_pickle=True)
    with pytest.raises(FileNotFoundError):
        cache.load_memory_cache(str(tmp_path / "missing.pkl"), allow_pickle=True)


def test_assigning_dspys_memory_cache_keeps_the_native_tier_working() -> None:
    from cachetools import LRUCache

    from dspyo3_native import LRUCache as NativeLRUCache

    cache = TieredCache(False, True, None)
    theirs = LRUCache(maxsize=10)
    theirs[cache.cache_key(REQUEST)] = {"outputs": ["adopted"]}
    cache.memory_cache = theirs
    assert isinstance(cache.memory_cache, NativeLRUCache)
    assert cache.get(REQUEST) == {"outputs": ["adopted"]}
    cache.put({**REQUEST, "n": 2}, {"outputs": ["new"]})
    assert cache.get({**REQUEST, "n": 2}) == {"outputs": ["new"]}
