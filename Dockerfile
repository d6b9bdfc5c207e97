# One image for every service (the command picks which): multi-arch, builds on linux/amd64 and linux/arm64.
#   docker buildx build --platform linux/amd64,linux/arm64 -t scns-conductor:0.1.0 .
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services
RUN pip install --no-cache-dir --prefix=/install .
# The jobs' supervisor, built for the image's architecture here: the final image has no compiler.
RUN gcc -O2 -static -o /install/bin/conductor-job services/executor/conductor_executor/supervisor.c

FROM python:3.11-slim
RUN useradd --create-home --uid 1000 conductor
COPY --from=build /install /usr/local
USER conductor
WORKDIR /home/conductor
ENV CONDUCTOR_HOST=0.0.0.0 CONDUCTOR_STATE_DIR=/var/lib/conductor CONDUCTOR_JOB_SUPERVISOR=/usr/local/bin/conductor-job
ENTRYPOINT ["conductor"]
CMD ["gateway"]
