"""Where a run came from, and what differs now: recorded in env.json, compared by rerun and resume.

A run records the git commit of the repository that holds its recipe and whether the recipe
or a recipe it extends had uncommitted changes; a hash of every recipe file it read; a
fingerprint of its data (the relative path and size of every image, hashed, and the count
of each class); and what bitwise equality depends on besides the plan: the processor, the
instruction set torch dispatches to, torch's thread count and the CUDA / cuDNN builds.
`rerun` and `resume` compare all of it with what is there now and name each difference.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ftcompile.datasets import resolve_splits
from ftcompile.errors import RecipeError
from ftcompile.load import RECIPE_ENCODING, load_overridden
from ftcompile.overrides import to_toml

# What bitwise equality of two runs of one plan depends on, besides the library versions.
MACHINE_KEYS = ("cpu", "cpu_capability", "threads", "cuda", "cudnn", "gpu")


# ----------------------------------------------------------------------------- recipes


def recipe_files(recipe: Path) -> list[Path]:
    """The recipe file and every file its `extends` chain reads, child first, absolute."""
    files = [recipe.resolve()]
    while True:
        try:
            parent = tomllib.loads(files[-1].read_text(encoding=RECIPE_ENCODING)).get("extends")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return files
        if not isinstance(parent, str):
            return files
        nxt = (files[-1].parent / parent).resolve()
        if nxt in files or not nxt.is_file():
            return files
        files.append(nxt)


def file_hashes(files: list[Path]) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def _recorded_files(env: dict[str, Any]) -> dict[str, str]:
    """env.json's recipe files, child first (a list: env.json's objects are written sorted)."""
    return {f["path"]: f["sha256"] for f in env.get("recipe_files") or [] if isinstance(f, dict)}


def git_info(recipe: Path | None) -> dict[str, Any]:
    """The commit of the repository holding the recipe, and whether the recipe or a file it
    extends differs from that commit (uncommitted or untracked)."""
    none = {"commit": None, "dirty": None}
    if recipe is None:
        return none
    files = recipe_files(recipe)

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(files[0].parent), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        top = git("rev-parse", "--show-toplevel")
        if head.returncode != 0 or top.returncode != 0:
            return none
        status = git("status", "--porcelain", "--", *map(str, files))
    except (OSError, subprocess.SubprocessError):
        return none
    root = Path(top.stdout.strip()).resolve()
    inside = [f for f in files if f.is_relative_to(root)]
    return {
        "commit": head.stdout.strip(),
        "dirty": bool(status.stdout.strip()),
        "repo": str(root),
        "files": [f.relative_to(root).as_posix() for f in inside],  # so `ftcompile diff COMMIT:path` finds them
    }


def recipe_record(recipe: Path | None, overrides: list[str]) -> dict[str, Any]:
    """env.json's provenance of the recipe (see `recipe_warnings`)."""
    return {
        "git": git_info(recipe),
        "recipe_files": [{"path": f, "sha256": h} for f, h in file_hashes(recipe_files(recipe)).items()]
        if recipe
        else [],
        "overrides": list(overrides),
    }


def stored_recipe_text(recipe: Path, overrides: list[str]) -> str:
    """What a run stores as recipe.toml: the file as it is, or, when --set changed it, the
    merged recipe with the overrides applied (read back, it compiles to the same plan)."""
    if not overrides:
        return recipe.read_text(encoding="utf-8")

    loaded = load_overridden(recipe, overrides)
    header = [
        f"{recipe.name} with --set {' --set '.join(overrides)} ('extends' merged in);",
        f"data paths are relative to the folder of {recipe}.",
    ]
    return to_toml(loaded.data, header)


def _key_changes(old: Any, new: Any, key: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*old, *(k for k in new if k not in old)]
        return [c for k in keys for c in _key_changes(old.get(k), new.get(k), f"{key}.{k}" if key else k)]
    return [] if old == new else [f"{key} ({_short(old)} -> {_short(new)})"]


def _short(value: Any) -> str:
    text = "absent" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def recipe_warnings(run_dir: Path, env: dict[str, Any], source_hash: str) -> list[str]:
    """Recipe files changed or gone since the run; when the recipe they give (merged, with the
    run's --set) is no longer the plan's, the keys whose values changed."""
    recorded = _recorded_files(env)
    now = file_hashes([Path(f) for f in recorded])
    out = [f"warning: the run's recipe file {f} is gone" for f in recorded if f not in now]
    changed = [f for f in recorded if f in now and now[f] != recorded[f]]
    if not changed:
        return out
    top = Path(next(iter(recorded)))
    if _source_hash(top, env) == source_hash:
        return out + [f"note: {', '.join(changed)} changed since the run, in comments or formatting only"]
    keys = _changed_keys(run_dir, env, top) or []
    named = f": {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}" if keys else ""
    return out + [f"warning: the recipe on disk differs from the run's ({', '.join(changed)} changed){named}"]


def _source_hash(recipe: Path, env: dict[str, Any]) -> str | None:
    try:
        return load_overridden(recipe, env.get("overrides") or []).source_hash()
    except RecipeError:
        return None


def _changed_keys(run_dir: Path, env: dict[str, Any], recipe: Path) -> list[str] | None:
    """Keys whose values differ between the stored recipe.toml and the recipe now (None: unknown)."""
    try:
        stored = tomllib.loads((run_dir / "recipe.toml").read_text(encoding=RECIPE_ENCODING))
        if "extends" in stored:  # a plain copy of a child recipe: compare that file alone
            current = tomllib.loads(recipe.read_text(encoding=RECIPE_ENCODING))
        else:
            current = load_overridden(recipe, env.get("overrides") or []).data
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecipeError):
        return None
    return _key_changes(stored, current)


# ----------------------------------------------------------------------------- data


def data_fingerprint(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """The data as the plan's lists see it: a hash of every (split, relative path, size) — or
    (split, index, label) for a builtin — and the images per class of each split."""
    splits = resolve_splits(data, root)
    digest = hashlib.sha256()
    counts: dict[str, dict[str, int]] = {}
    for split, samples, folder in (("train", splits.train, splits.train_dir), ("val", splits.val, splits.val_dir)):
        per_class = dict.fromkeys(splits.class_names, 0)
        for sample, label in samples:
            size = os.stat(folder / sample).st_size if folder is not None else label
            digest.update(f"{split}/{sample}\t{size}\n".encode())
            per_class[splits.class_names[label]] += 1
        counts[split] = per_class
    return {
        "fingerprint": digest.hexdigest(),
        "train": counts["train"],
        "val": counts["val"],
        "builtin": splits.builtin,
    }


def data_warnings(env: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between the data the run saw and the data there now."""
    then = env.get("data")
    if not isinstance(then, dict) or "fingerprint" not in then or then["fingerprint"] == now["fingerprint"]:
        return []
    diffs = [
        f"{split} {name} {then[split].get(name, 0)} -> {now[split].get(name, 0)}"
        for split in ("train", "val")
        for name in [*then[split], *(n for n in now[split] if n not in then[split])]
        if then[split].get(name, 0) != now[split].get(name, 0)
    ]
    what = (
        "; ".join(diffs[:8]) + (" ..." if len(diffs) > 8 else "")
        if diffs
        else "same counts per class, but file names or sizes differ"
    )
    return [
        f"warning: the data differs from the run's (fingerprint {then['fingerprint'][:12]} -> {now['fingerprint'][:12]}): {what}"
    ]


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What bitwise equality depends on besides the plan and the library versions."""
    import torch  # start-up time: calibrate and plan --estimate read cpu_model here without torch

    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }


def machine_warnings(env: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line naming each difference that can make this run differ from the recorded one in the last bits."""
    then = env.get("machine")
    if not isinstance(then, dict):
        return []
    diffs = [f"{k} {then.get(k)!r} -> {now.get(k)!r}" for k in MACHINE_KEYS if then.get(k) != now.get(k)]
    if not diffs:
        return []
    return ["warning: results are bitwise equal only on the same kind of machine; here differs: " + "; ".join(diffs)]
