# Dockerfile — the mx image (mxd and mxctl) from Debian 12 packages only.
#
#   docker build -t registry.example.net/mail/mx:0.1.0 .
#
# No container engine runs on the development machines, so this file is not
# built in CI; tests/helm/test_image.py checks it instead: the build stage
# runs scripts/install-deps itself (the same steps as a developer's machine),
# and the runtime stage installs exactly the packages that own the shared
# libraries mxd and mxctl link against.

# ---- build ------------------------------------------------------------------
FROM debian:12 AS build
WORKDIR /src
COPY scripts/install-deps scripts/install-deps
RUN scripts/install-deps
COPY . .
RUN cmake --preset release \
 && cmake --build --preset release --target mxd mxctl \
 && strip build/release/mxd/mxd build/release/control/mxctl

# ---- runtime ----------------------------------------------------------------
FROM debian:12-slim
# Libraries of mxd and mxctl (RocksDB is linked statically; its compression
# libraries are not).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates \
      libabsl20220623 libbz2-1.0 libc-ares2 libc6 libcivetweb1 libcrypt1 libgcc-s1 \
      libgrpc++1.51 libgrpc29 liblz4-1 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
      libprotobuf32 libraft2 libre2-9 libsnappy1v5 libssl3 libstdc++6 libuv1 libyaml-cpp0.7 \
      libzstd1 zlib1g \
 && rm -rf /var/lib/apt/lists/*
# The uid/gid the Helm chart runs as (podSecurityContext.runAsUser).
RUN groupadd --system --gid 10001 mx \
 && useradd --system --uid 10001 --gid mx --home-dir /var/lib/mx --shell /usr/sbin/nologin mx \
 && mkdir -p /var/lib/mx/queue /etc/mx \
 && chown -R mx:mx /var/lib/mx
COPY --from=build /src/build/release/mxd/mxd /src/build/release/control/mxctl /usr/local/bin/
USER 10001:10001
# smtp, queue gRPC, control, Raft (shard 0; shard s is 7500 + s), metrics, health
EXPOSE 2525 7400 7401 7500 9400 9401
VOLUME /var/lib/mx/queue
ENTRYPOINT ["/usr/local/bin/mxd"]
CMD ["all", "--config", "/etc/mx/mx.yaml"]
