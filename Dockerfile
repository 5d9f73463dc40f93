# rdbsync node image. Configured through RDBSYNC_* environment variables only (see
# node/_config.py); compose.yaml runs a three-node cluster from it.
#
#   docker build -t rdbsync .
#   docker run --rm rdbsync --help
#
# Every node needs at least RDBSYNC_ID, RDBSYNC_RAFT (host:port, also the node's Raft
# identity: peers must list exactly this string), RDBSYNC_PEERS and a cluster secret
# (RDBSYNC_SECRET_FILE, e.g. a compose/swarm secret under /run/secrets).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Fixed uid/gid so a bind-mounted secret file or data directory can be chowned to it.
RUN groupadd --system --gid 10001 rdbsync \
    && useradd --system --no-log-init --uid 10001 --gid rdbsync \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin rdbsync \
    && install -d -o rdbsync -g rdbsync -m 0700 /data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY rdb ./rdb
COPY resync ./resync
COPY fencing ./fencing
COPY node ./node
COPY chaos ./chaos
COPY rdbsync ./rdbsync
COPY apps ./apps
RUN pip install --no-cache-dir . \
    && rm -rf /src

ENV RDBSYNC_DATA_DIR=/data \
    RDBSYNC_HTTP=0.0.0.0:8080 \
    RDBSYNC_LOG_FORMAT=json

WORKDIR /data
VOLUME /data
# 8080: HTTP API (RDBSYNC_HTTP); 7000: Raft (RDBSYNC_RAFT, e.g. n1:7000).
EXPOSE 8080 7000

USER 10001:10001

# No curl in slim: probe /healthz (exempt from the API token) on the port of RDBSYNC_HTTP.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; h, _, p = os.environ.get('RDBSYNC_HTTP', '0.0.0.0:8080').rpartition(':'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::', '[::]') else h; urllib.request.urlopen(f'http://{h}:{p}/healthz', timeout=4)"]

ENTRYPOINT ["rdbsync", "node"]
