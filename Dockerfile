# The cluster's image: Ray 2.60 (CUDA 12.8, cuDNN 9) with this project's dependencies baked in,
# so a new worker installs only the code (scripts/node_setup.sh) instead of ~3 GB of TensorFlow
# and CUDA. The base is cluster.yaml's docker.image. Build from the repository root and push:
#
#   docker build -t ACCOUNT.dkr.ecr.us-west-2.amazonaws.com/finetune-search:2.60.0-cu128 .
#   docker push ACCOUNT.dkr.ecr.us-west-2.amazonaws.com/finetune-search:2.60.0-cu128
#
# then put that name in cluster.yaml's docker.image (README: "A faster worker start").
FROM rayproject/ray:2.60.0-py311-cu128

# The dependency list comes from pyproject.toml itself: no second list to keep in sync. Its
# fingerprint tells a node's set-up that this image already holds it.
COPY --chown=1000:100 pyproject.toml scripts/image_requirements.py /home/ray/image-build/
RUN cd /home/ray/image-build \
    && python image_requirements.py pyproject.toml --extra gpu > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt \
    && python image_requirements.py pyproject.toml --extra gpu --fingerprint \
       > /home/ray/.finetune-search-deps \
    && cd /home/ray && rm -rf /home/ray/image-build
