"""The experiment folder: its layout, the spec it ran and the study journal's mirror.

One place knows where things are in ``<storage>/<name>/``: ``spec.yaml``, the Optuna journal,
the ``extend-N`` rounds (``driver.lock`` is :mod:`search.outputs.lock`'s). A folder may be local
or on cloud storage; everything goes through :mod:`search.storage`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import uuid

from search import storage
from search.errors import SpecError
from search.outputs.lock import LOCK_FILE
from search.outputs.study import STUDY_FILE, journal_path_for

SPEC_FILE = "spec.yaml"
# Names one `run` of the experiment: written into the folder with spec.yaml and into the local
# mirror of a cloud experiment's journal, which is used only while the two agree.
RUN_ID_FILE = "run_id"
# The dataset's class names, in label order: in the experiment folder (the driver writes it),
# and beside every model that export and retrain write (predict reads it there).
CLASS_NAMES_FILE = "class_names.json"
ROUND_PREFIX = "extend-"  # `extend` runs live in sub-folders named extend-1, extend-2, ...
MAIN_ROUND = "main"


def check_experiment_dir(path: str) -> tuple[storage.pafs.FileSystem, str]:
    """Checks that ``path`` is one of our experiment folders.

    Returns:
        Its filesystem and the path inside it.

    Raises:
        SpecError: When it is missing, not a folder, empty, or made by another tool.
    """
    fs, root = storage.filesystem(path)
    info = fs.get_file_info(root)
    if info.type == storage.FileType.NotFound:
        raise SpecError(f"{path}: experiment folder not found")
    if info.type != storage.FileType.Directory:
        raise SpecError(f"{path}: must be an experiment folder, got a file")
    if not storage.list_dir(fs, root):
        raise SpecError(f"{path}: experiment folder is empty (did the search start?)")
    if not storage.exists(fs, storage.join(root, SPEC_FILE)):
        if storage.exists(fs, storage.join(root, LOCK_FILE)) and never_started(path):
            raise SpecError(
                f"{path}: the search never started (its driver stopped right "
                f"after taking {LOCK_FILE}, before writing {SPEC_FILE}); start it "
                f"again with `finetune-search run` under the same name"
            )
        raise SpecError(
            f"{path}: not a finetune-search experiment (no {SPEC_FILE}; "
            f"expected the folder `finetune-search run` created)"
        )
    return fs, root


def read_run_id(experiment_dir: str) -> str | None:
    """The run id in an experiment folder, or ``None`` (none yet, or a folder from before run
    ids)."""
    fs, root = storage.filesystem(experiment_dir)
    path = storage.join(root, RUN_ID_FILE)
    if not storage.exists(fs, path):
        return None
    return storage.read_text(fs, path).strip() or None


def ensure_run_id(experiment_dir: str) -> str:
    """The folder's run id; a folder written before run ids gets one now."""
    run_id = read_run_id(experiment_dir)
    if run_id is None:
        run_id = uuid.uuid4().hex
        storage.write_atomic(storage.join(experiment_dir, RUN_ID_FILE), run_id + "\n")
    return run_id


_JOURNAL_INTERMEDIATE_VALUE = 7  # Optuna's JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE


# What a driver writes before its search starts: its lock, spec.yaml, the run id, the class
# names and the journal; and Ray's files from before its first experiment snapshot.
_START_FILES = frozenset({LOCK_FILE, SPEC_FILE, RUN_ID_FILE, CLASS_NAMES_FILE, STUDY_FILE})
_RAY_START_PATTERNS = (
    "*.pkl",
    "basic-variant-state-*.json",
    "search_gen_state-*.json",
    ".validate_storage_marker",
    ".*.partial",
)


def never_started(experiment_dir: str) -> bool:
    """Whether the folder holds a search whose driver stopped before the search started (it
    was killed while it loaded the data, started Ray or built its tuner).

    That is: a folder with our ``driver.lock`` or ``spec.yaml``, no Ray experiment state, no
    trial or ``extend`` folder, no file but a driver's and Ray's start files, and no epoch of
    any trial in the study journal. A folder with anything else is not taken for one.
    """
    fs, root = storage.filesystem(experiment_dir)
    names = set()
    for info in storage.list_dir(fs, root):
        if info.type == storage.FileType.Directory:
            return False
        if info.base_name not in _START_FILES and not any(
            fnmatch.fnmatch(info.base_name, pattern) for pattern in _RAY_START_PATTERNS
        ):
            return False
        names.add(info.base_name)
    if not names & {LOCK_FILE, SPEC_FILE}:
        return False
    if STUDY_FILE in names:
        for line in storage.read_bytes(fs, storage.join(root, STUDY_FILE)).splitlines():
            try:
                if json.loads(line).get("op_code") == _JOURNAL_INTERMEDIATE_VALUE:
                    return False
            except (ValueError, AttributeError):
                break  # a cut line ends the journal
    return True


def clear_for_start(experiment_dir: str, keep: tuple[str, ...] = ()) -> list[str]:
    """Removes what a search that never started left in its folder, but ``keep`` (the lock
    the new driver holds).

    Returns:
        The names removed.
    """
    fs, root = storage.filesystem(experiment_dir)
    removed = []
    for info in storage.list_dir(fs, root):
        if info.type == storage.FileType.File and info.base_name not in keep:
            fs.delete_file(info.path)
            removed.append(info.base_name)
    return removed


def experiment_exists(path: str) -> bool:
    """Whether ``path`` already holds something (an earlier search, or anything else)."""
    fs, root = storage.filesystem(path)
    return storage.exists(fs, root) and bool(storage.list_dir(fs, root))


def load_experiment_spec(experiment_dir: str):  # -> ExperimentSpec (import kept lazy)
    """The spec a search was started with, from its folder.

    Raises:
        SpecError: When the folder is not an experiment or its ``spec.yaml`` is broken.
    """
    import yaml

    from search.spec import load_spec_dict

    fs, root = check_experiment_dir(experiment_dir)
    source = f"{experiment_dir}/{SPEC_FILE}"
    try:
        raw = yaml.safe_load(storage.read_text(fs, storage.join(root, SPEC_FILE)))
    except yaml.YAMLError:
        raise SpecError(f"{source}: invalid YAML") from None
    return load_spec_dict(raw, source=source)


def write_class_names(folder: str, class_names: list[str] | tuple[str, ...]) -> None:
    """Writes ``class_names.json`` (label order) into a folder (local path or URI)."""
    storage.write_atomic(
        storage.join(folder, CLASS_NAMES_FILE), json.dumps(list(class_names)) + "\n"
    )


def read_class_names(folder: str) -> list[str] | None:
    """The ``class_names.json`` of a folder, or ``None`` when it has none.

    Raises:
        SpecError: When the file is there but is not a JSON list of names.
    """
    path, names = _read_json(folder, CLASS_NAMES_FILE)
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SpecError(f"{path}: must be a JSON list of class names")
    return names


_INVALID = object()  # a JSON file that is there but cannot be parsed


def _read_json(folder: str, file_name: str) -> tuple[str, object]:
    """``(path, value)`` of a JSON file in a folder: ``None`` when missing, ``_INVALID`` when
    it cannot be read or parsed."""
    fs, root = storage.filesystem(folder)
    path = storage.join(root, file_name)
    if not storage.exists(fs, path):
        return path, None
    try:
        return path, json.loads(storage.read_text(fs, path))
    except (ValueError, UnicodeDecodeError, OSError):
        return path, _INVALID


def round_dirs(fs: storage.pafs.FileSystem, root: str) -> list[tuple[str, str]]:
    """The Ray experiments inside the folder: the first run, then each ``extend`` round."""
    rounds = [(MAIN_ROUND, root)]
    extra = sorted(
        (
            i
            for i in storage.list_dir(fs, root)
            if i.type == storage.FileType.Directory and i.base_name.startswith(ROUND_PREFIX)
        ),
        key=lambda i: int(i.base_name[len(ROUND_PREFIX) :] or 0),
    )
    rounds += [(i.base_name, i.path) for i in extra]
    return rounds


def round_name(index: int) -> str:
    """The folder name of the ``index``-th ``extend`` round."""
    return f"{ROUND_PREFIX}{index}"


def experiment_root(fs: storage.pafs.FileSystem, round_path: str) -> str:
    """The experiment folder that holds the Ray experiment at ``round_path``: the folder
    itself (the first run), or the parent of an ``extend`` round."""
    if storage.exists(fs, storage.join(round_path, SPEC_FILE)):
        return round_path
    return round_path.rstrip("/").rsplit("/", 1)[0]


# --------------------------------------------------------------------------------------------
# the study journal (a local file: Optuna's journal appends under file locks, which object
# stores do not have, so a cloud experiment's journal is mirrored on the driver's machine)


def local_mirror_dir(experiment_dir: str, run_id: str | None = None) -> str:
    """Where the driver keeps the Optuna journal: the experiment folder itself, or a local
    mirror of a cloud one.

    The mirror's path depends only on the folder's URI, so it outlives the experiment: a
    search deleted from its bucket and started again under the same URI finds the old one's
    journal there. With ``run_id`` (the folder's), a mirror written for another run (or before
    run ids) loses its journal, and takes this run's id.
    """
    if not storage.is_remote(experiment_dir):
        return experiment_dir
    digest = hashlib.sha256(experiment_dir.encode("utf-8")).hexdigest()[:12]
    name = storage.split_name(experiment_dir)[1]
    cache = os.path.join(os.path.expanduser("~"), ".cache", "finetune-search", f"{name}-{digest}")
    os.makedirs(cache, exist_ok=True)
    if run_id is not None:
        marker = os.path.join(cache, RUN_ID_FILE)
        try:
            with open(marker, encoding="utf-8") as handle:
                mirrored = handle.read().strip()
        except FileNotFoundError:
            mirrored = None
        if mirrored != run_id:
            journal = journal_path_for(cache)
            if os.path.exists(journal):
                os.remove(journal)
            storage.write_atomic(marker, run_id + "\n")
    return cache


def sync_journal(experiment_dir: str, local_dir: str) -> bool:
    """Copies the local journal up to a cloud experiment folder, whole lines only (Optuna may
    be appending one right now).

    Returns:
        Whether something was uploaded (``False`` for a local experiment or no journal).
    """
    if not storage.is_remote(experiment_dir):
        return False
    source = journal_path_for(local_dir)
    if not os.path.exists(source):
        return False
    with open(source, "rb") as handle:
        data = handle.read()
    storage.write_atomic(storage.join(experiment_dir, STUDY_FILE), data[: data.rfind(b"\n") + 1])
    return True


def fetch_journal(experiment_dir: str, local_path: str) -> bool:
    """Brings a cloud experiment's journal down to ``local_path``.

    A local copy that extends the one in storage is kept: this machine's driver wrote it
    last and was stopped before uploading (the journal only grows, and uploads are its whole
    lines). Otherwise storage is the truth. (:func:`local_mirror_dir` has already dropped a
    local copy of another run's journal.)

    Returns:
        Whether a journal exists at ``local_path`` afterwards.
    """
    fs, root = storage.filesystem(experiment_dir)
    remote = storage.join(root, STUDY_FILE)
    if not storage.exists(fs, remote):
        return os.path.exists(local_path)
    data = storage.read_bytes(fs, remote)
    local = b""
    if os.path.exists(local_path):
        with open(local_path, "rb") as handle:
            local = handle.read()
    if len(local) <= len(data) or not local.startswith(data):
        storage.write_atomic(local_path, data)
    return True
