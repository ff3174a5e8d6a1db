# prodsmart-edge container image: small, non-root, database on a volume, config mounted read-only.
#   docker build -t prodsmart-edge .
#   docker run -d --name prodsmart-edge --restart=always \
#     -v /etc/prodsmart-edge:/etc/prodsmart-edge:ro -v prodsmart-edge-data:/var/lib/prodsmart-edge \
#     --env-file /etc/prodsmart-edge/secrets.env --device /dev/ttyUSB0 --group-add dialout \
#     -p 127.0.0.1:9108:9108 prodsmart-edge
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
RUN python -m venv /opt/prodsmart-edge \
 && /opt/prodsmart-edge/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="prodsmart-edge" \
      org.opencontainers.image.description="Shop-floor machine edge agent for Prodsmart"
# dialout (gid 20 on Debian) owns serial ports, for Modbus RTU.
RUN useradd --system --uid 10001 --gid dialout --home-dir /var/lib/prodsmart-edge prodsmart \
 && mkdir -p /var/lib/prodsmart-edge /etc/prodsmart-edge \
 && chown prodsmart:dialout /var/lib/prodsmart-edge
COPY --from=build /opt/prodsmart-edge /opt/prodsmart-edge
ENV PATH=/opt/prodsmart-edge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:20
WORKDIR /var/lib/prodsmart-edge
VOLUME ["/var/lib/prodsmart-edge"]
# In a container the metrics must listen on 0.0.0.0 to be published: set metrics.listen in the config.
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["prodsmart-edge"]
CMD ["run", "/etc/prodsmart-edge/agent.yaml"]
