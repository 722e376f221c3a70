# dfgate image: the proxy + executor in front of an existing PostgreSQL.
#   docker build -t dfgate .
#   docker run -p 6432:6432 -e DFGATE_UPSTREAM=postgres://... -e DFGATE_LISTEN=0.0.0.0:6432 dfgate
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
COPY web ./web
COPY bench ./bench
COPY migrations ./migrations
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY migrations ./migrations
USER node
EXPOSE 6432
ENTRYPOINT ["node", "dist/src/cli.js"]
