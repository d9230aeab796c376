# Static Next.js export served by nginx, which also proxies /api/ to the backend.
#
# Offline rebuilds: hand in a filled npm cache (a directory holding _cacache/) as the
# build context named `npm-cache` (compose: build.additional_contexts: {npm-cache: DIR};
# buildx: --build-context npm-cache=DIR). It must hold every tarball the lockfile needs
# on the image's platform, including @next/swc-linux-x64-musl (or -gnu) and the matching
# @img/sharp-* packages. Without it, the empty stage below is used and npm goes online.
FROM scratch AS npm-cache

FROM node:18-alpine AS build
WORKDIR /app
ENV NEXT_TELEMETRY_DISABLED=1
# Dependencies are their own layer: it only changes with package.json / package-lock.json.
COPY package.json package-lock.json ./
RUN --mount=type=bind,from=npm-cache,target=/npm-cache,rw \
    if [ -d /npm-cache/_cacache ]; then \
      npm ci --offline --no-audit --no-fund --cache /npm-cache; \
    else \
      npm ci --no-audit --no-fund; \
    fi
COPY . .
RUN npm run build

FROM nginx:alpine
COPY nginx.conf /etc/nginx/conf.d/default.conf
COPY --from=build /app/out /usr/share/nginx/html
EXPOSE 80
