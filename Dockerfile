# The feature store with the example repo; used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY feature_store ./feature_store
RUN pip install --no-cache-dir '.[postgres]'
COPY feature_repo ./feature_repo
COPY docker/serve.sh ./serve.sh
# The feature server's port (docker-compose.yml: service feature-server runs /app/serve.sh, `serve --host 0.0.0.0`
# with an API key).
EXPOSE 6566
ENTRYPOINT ["feature-store", "--repo", "/app/feature_repo"]
CMD ["list"]
