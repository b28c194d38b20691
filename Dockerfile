# syntax=docker/dockerfile:1
# heed: one static binary in a small non-root image.
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t heed:local .
#   docker run --rm heed:local version
# VERSION and REVISION stamp `heed version` and heed_build_info (the build
# context has no .git, so the go tool cannot record the revision itself);
# unset, they read "(devel)" and "unknown".
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=""
ARG REVISION=""
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X github.com/heed-dev/heed/internal/buildinfo.version=${VERSION} -X github.com/heed-dev/heed/internal/buildinfo.revision=${REVISION}" -o /out/heed ./cmd/heed

# distroless static: no shell, no package manager, user 65532 (nonroot).
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=""
ARG REVISION=""
LABEL org.opencontainers.image.version="${VERSION}" org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/heed /usr/local/bin/heed
USER 65532:65532
# 8080: Connect, gRPC and gRPC-Web (serve); 9464: /metrics, /healthz, /readyz.
EXPOSE 8080 9464
# The binary asks its own /healthz (the image has no curl); a process serving
# metrics elsewhere (apply on 9465) overrides --health-url in its compose service.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/heed", "healthcheck", "--health-url", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["/usr/local/bin/heed"]
CMD ["help"]
