# syntax=docker/dockerfile:1
# Build: compiles TypeScript and the native SQLite binding with the full toolchain.
FROM node:24-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY drivers ./drivers
COPY simulators ./simulators
COPY mappings ./mappings
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

# Run: only the built gateway, its production dependencies and the mapping tables.
FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/mappings ./mappings
RUN mkdir -p /data && chown node:node /data
USER node
ENV MDI_DATA_DIR=/data
VOLUME ["/data"]
# MLLP (PCD-01), HTTP API, embedded MQTT broker, embedded EPJ stand-in.
EXPOSE 2575 2576 8080 1883 8090
HEALTHCHECK --interval=30s --timeout=3s CMD node -e "fetch('http://127.0.0.1:8080/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "dist/src/main.js"]
CMD ["start"]
