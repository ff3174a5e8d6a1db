# prodsmart-edge container image: small, non-root, database on a volume, config mounted read-only.
# It installs from the offline bundle's wheelhouse, so the build needs no network:
#   packaging/bundle.sh build/bundle && docker build -t prodsmart-edge build/bundle
#   docker run -d --name prodsmart-edge --restart=always \
#     -v /etc/prodsmart-edge:/etc/prodsmart-edge:ro -v prodsmart-edge-data:/var/lib/prodsmart-edge \
#     --env-file /etc/prodsmart-edge/secrets.env --device /dev/ttyUSB0 --group-add dialout \
#     -p 127.0.0.1:9108:9108 prodsmart-edge
# BASE: any Debian 12 image with python3 (3.11) and its venv module; packaging/image.sh builds one
# with mmdebstrap when no registry is reachable. The wheelhouse is for CPython 3.11.
ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
COPY wheels /wheels
RUN python3 -m venv /opt/prodsmart-edge \
 && /opt/prodsmart-edge/bin/python -m pip install --no-index --no-cache-dir --disable-pip-version-check \
      --find-links /wheels /wheels/prodsmart_edge-*.whl \
 && /opt/prodsmart-edge/bin/python -m pip uninstall --yes --disable-pip-version-check pip setuptools

FROM ${BASE}
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
