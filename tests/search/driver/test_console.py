# ruff: noqa: E501 - FORWARDED holds real console lines, kept whole
"""The search's console: our lines, real warnings and errors once each, no stack chatter."""

from __future__ import annotations

import io

import pytest

from search.driver.console import ConsoleFilter, is_chatter, worker_message

C, R = "\x1b[36m", "\x1b[0m"
# Lines Ray forwarded from two trial processes during a real `finetune-search run` (TensorFlow
# 2.21, Ray 2.60), plus the weights warning every worker repeats, a real error, and the SIGTERM
# traceback a worker prints when Ray shuts it down.
FORWARDED = f"""\
{C}(train_trial pid=18897){R} WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
{C}(train_trial pid=18897){R} I0000 00:00:1795964677.459283   18993 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.
{C}(train_trial pid=18897){R} I0000 00:00:1795964677.467745   18993 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
{C}(train_trial pid=18897){R} I0000 00:00:1795964677.680813   18993 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
{C}(train_trial pid=18897){R} To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
{C}(train_trial pid=18896){R} WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\x1b[32m [repeated 3x across cluster] (Ray deduplicates logs by default.)\x1b[0m
{C}(train_trial pid=18897){R} E0000 00:00:1795964685.907555   18993 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
{C}(train_trial pid=18897){R} Checkpoint successfully created at: Checkpoint(filesystem=local, path=/tmp/r/c1/trial_64a5c813/checkpoint_000000)
{C}(train_trial pid=18897){R} /repo/search/trial/runtime.py:150: WeightsFallbackWarning: weights='auto': imagenet weights of vgg16 are not cached and cannot be downloaded (no network); using random initialisation.
{C}(train_trial pid=18897){R}   model = build_model(model_config, input_shape=input_shape, num_classes=num_classes)
{C}(train_trial pid=18896){R} /repo/search/trial/runtime.py:150: WeightsFallbackWarning: weights='auto': imagenet weights of vgg16 are not cached and cannot be downloaded (no network); using random initialisation.
{C}(train_trial pid=18896){R}   model = build_model(model_config, input_shape=input_shape, num_classes=num_classes)
{C}(train_trial pid=18896, ip=10.0.0.7){R} ValueError: Input 0 of layer "dense" is incompatible with the layer
{C}(train_trial pid=18897){R} Traceback (most recent call last):
{C}(train_trial pid=18897){R}   File "python/ray/_raylet.pyx", line 1722, in ray._raylet.execute_task
{C}(train_trial pid=18897){R}   File "/venv/ray/_private/worker.py", line 1010, in sigterm_handler
{C}(train_trial pid=18897){R}     raise_sys_exit_with_custom_error_message(
{C}(train_trial pid=18897){R} SystemExit: 1
[15:04:52] trial 64a5c813 complete at epoch 3  |  running=1 stopped=0 complete=1 failed=0
"""


def test_worker_chatter_is_dropped_and_each_real_warning_or_error_shown_once():
    out, err = io.StringIO(), io.StringIO()
    seen: set[str] = set()
    stdout, stderr = ConsoleFilter(out, seen), ConsoleFilter(err, seen)
    lines = FORWARDED.splitlines(keepends=True)
    for i, line in enumerate(lines):
        # Ray writes in pieces and on both streams; a line may arrive in two writes.
        stream = stderr if i % 2 else stdout
        stream.write(line[:15])
        stream.write(line[15:])
    stdout.flush()
    stderr.flush()
    shown = (out.getvalue() + err.getvalue()).splitlines()
    assert sorted(worker_message(line) or line for line in shown) == sorted(
        [
            "/repo/search/trial/runtime.py:150: WeightsFallbackWarning: weights='auto': imagenet "
            "weights of vgg16 are not cached and cannot be downloaded (no network); using random "
            "initialisation.",
            "[15:04:52] trial 64a5c813 complete at epoch 3  |  running=1 stopped=0 complete=1 "
            "failed=0",
            'ValueError: Input 0 of layer "dense" is incompatible with the layer',
        ]
    )


def test_driver_lines_pass_unchanged_and_chatter_is_recognised():
    out = io.StringIO()
    ConsoleFilter(out, set()).write(
        "[12:00:00] trial a started: x=1\nWARNING same\nWARNING same\n"
    )
    assert out.getvalue() == "[12:00:00] trial a started: x=1\nWARNING same\nWARNING same\n"
    assert is_chatter("SystemExit: 1") and is_chatter("Checkpoint successfully created at: x")
    assert not is_chatter("UserWarning: your data has one class")


# What a user saw before: the stack's chatter, none of which is the search's.
CHATTER_SEEN = (
    "oneDNN",
    "cuInit",
    "absl::",
    "This TensorFlow binary",
    "Configuration for experiment",
    "/tmp/ray/session",
    "To visualize your results",
    "Checkpoint successfully created",
    "A new study created",
    "Using an existing study",
    "SystemExit",
    "Traceback",
    "pid=",
)


@pytest.mark.slow
def test_a_cli_search_shows_its_progress_and_none_of_the_stacks_chatter(tracked_search):
    console = tracked_search.stdout + tracked_search.stderr
    assert tracked_search.returncode == 0, console[-3000:]
    assert [c for c in CHATTER_SEEN if c in console] == []
    experiment = tracked_search.experiment
    assert f"tensorboard --logdir {experiment}" in tracked_search.stdout
    assert f"finetune-search status {experiment} --watch" in tracked_search.stdout
    assert " epoch 1/3 val_accuracy=" in tracked_search.stdout
    assert "best trial: " in tracked_search.stdout
