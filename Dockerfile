# One Giao Ban node: `docker compose up` (see docker-compose.yml), or
#   docker build -t giaoban . && docker run -p 8080:8080 -v giaoban-data:/app/data giaoban
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GIAOBAN_HOST=0.0.0.0 \
    GIAOBAN_PORT=8080 \
    GIAOBAN_DATA_DIR=/app/data

# Node.js and npm are needed only to fetch the pinned socket.io-client the web pages load;
# gcc and the C library's headers build the forwarding loop in C (server/sfu/_fanout.c).
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Python side. Installed in editable mode so that the package runs from /app, next to web/
# (the templates, static files and node_modules it serves are not part of the wheel).
COPY pyproject.toml README.md ./
COPY server/ server/
COPY signaling/ signaling/
COPY recording/ recording/
RUN pip install -e .

# Browser side: `npm ci` starts from an empty node_modules, whatever the build context had.
COPY web/ web/
RUN cd web && npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

RUN mkdir -p /app/data
VOLUME ["/app/data"]
EXPOSE 8080

CMD ["giaoban", "serve"]
