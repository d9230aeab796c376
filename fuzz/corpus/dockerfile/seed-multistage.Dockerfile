# syntax=docker/dockerfile:1
# escape=\
ARG BASE=alpine:3.20
ARG VERSION
FROM ${BASE} AS builder
ARG VERSION=${VERSION:-1}
RUN --mount=type=cache,target=/root/.cache \
    echo build ${VERSION}
FROM builder AS test
RUN echo test
FROM scratch AS wheels
FROM python:3.9-slim AS final
COPY --from=builder /out /out
COPY --from=wheels / /wheels
COPY --from=nginx:alpine /etc/nginx /etc/nginx
ONBUILD RUN echo hi
