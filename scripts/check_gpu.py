"""A GPU worker's last set-up step: TensorFlow inside this container must see a GPU.

cluster.yaml runs it in ``worker_setup_commands``. Without it a worker whose driver, container
``--gpus all`` or CUDA wheels are broken would join the cluster, advertise its GPU to Ray, and
every trial placed there would end with ``no_gpu``. A failed set-up command instead marks the
node failed, and ``ray monitor cluster.yaml`` shows this message.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def main(tf: Any = None) -> int:
    """Prints what TensorFlow sees; returns 1 (and says what to check) when it sees no GPU."""
    if tf is None:
        import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print(
            f"finetune-search: TensorFlow {tf.__version__} in this container sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            f"check `nvidia-smi` on the host, `--gpus all` in docker.worker_run_options and "
            f"that tensorflow[and-cuda] is installed",
            file=sys.stderr,
        )
        return 1
    print(
        f"finetune-search: TensorFlow {tf.__version__} sees {len(gpus)} GPU(s): "
        f"{', '.join(gpu.name for gpu in gpus)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
