# syntax=docker/dockerfile:1
# Sluice: the gateway binary on a distroless base (glibc, CA roots, no shell), run as a
# user that is not root. Build: `docker build -t sluice .` (or `podman build`).
# docs/operating.md#containers says how to run it, io_uring under seccomp included.

# The release binary, built from the locked dependencies.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice \
 && install -D -m 0755 target/release/sluice /out/sluice

# What runs: the binary, the example configuration, nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sluice /usr/local/bin/sluice
COPY examples/krakend.json /etc/sluice/krakend.json
# The image refuses to build around a configuration Sluice would refuse to run.
RUN ["/usr/local/bin/sluice", "check", "-c", "/etc/sluice/krakend.json"]
# distroless's nonroot user, by number (Kubernetes' runAsNonRoot checks numbers).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "-c", "/etc/sluice/krakend.json"]
