FROM busybox:latest AS builder
RUN sleep 2 && echo web-built > /out.txt
FROM busybox:latest AS final
COPY --from=builder /out.txt /out.txt
