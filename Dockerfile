# The fogfl image: one image for every role; the command picks the role.
#   docker build --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> -t fogfl .
#   docker run --rm fogfl client --id c1 --region north --mqtt-host broker
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch goes in first, alone, so this heavy layer is cached across code changes. Pass
# PyTorch's CPU wheel index as TORCH_INDEX_URL: the default index's Linux torch wheel
# brings several GB of CUDA libraries that fogfl never uses.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"

WORKDIR /opt/fogfl
# README.md* : the readme is optional to the build (the wildcard may match nothing).
COPY pyproject.toml README.md* ./
COPY fogfl ./fogfl
RUN pip install . && rm -rf build fogfl.egg-info

# Run as an unprivileged user; the server writes its run directories under ~/runs and fog
# brokers their round journal under ~/.fogfl (docker-compose.yml mounts volumes there).
RUN useradd --create-home --uid 10001 fogfl \
    && mkdir -p /home/fogfl/runs /home/fogfl/.fogfl \
    && chown fogfl:fogfl /home/fogfl/runs /home/fogfl/.fogfl
USER fogfl
WORKDIR /home/fogfl

ENTRYPOINT ["fogfl"]
CMD ["--help"]
