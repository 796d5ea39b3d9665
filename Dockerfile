# Image for fl-server and fl-node (used by docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY fl_server ./fl_server
COPY fl_node ./fl_node
RUN pip install . && useradd --create-home fl && mkdir -p /app/history /app/models && chown fl /app/history /app/models
USER fl
CMD ["fl-server", "--help"]
