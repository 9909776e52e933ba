# The gateway on its embedded defaults; mount a config at /etc/gb28181/gateway.toml to change them.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY conformance ./conformance
RUN pip install --no-cache-dir .

# SIP signalling, UDP and TCP on one port; RTP on the media port range (media.port_min..max).
# The store lives in /app/data.
EXPOSE 5060/udp 5060/tcp 30000-39999/udp 30000-39999/tcp
VOLUME ["/app/data"]

ENTRYPOINT ["gb28181-gateway"]
CMD ["run"]
