#!/usr/bin/env bash
# Creates the five Secrets the stgt manifests reference, in one namespace (dev overlay: kubeflow, prod: stgt).
# The overlays hold no Secret: `kubectl apply -k` never writes (or overwrites) one, and a pod whose Secret is
# missing waits in CreateContainerConfigError naming it.
#
#   infra/k8s/create-secrets.sh kubeflow              create them (values generated, see below)
#   DRY_RUN=1 infra/k8s/create-secrets.sh kubeflow    print them as YAML instead, create nothing
#
# Every value may be given in the environment; the rest are generated as random hex (safe inside the URIs they go
# into): PG_USER (mlflow), PG_PASSWORD, S3_ACCESS_KEY, S3_SECRET_KEY, S3_ENDPOINT (http://stgt-seaweedfs:8333; ""
# for AWS), MLFLOW_ADMIN_PASSWORD, MLFLOW_PIPELINE_PASSWORD. Values repeated across Secrets (the Postgres password
# in MLflow's auth store URI, the S3 keys in SeaweedFS's identities) are written from one variable, so they agree.
# All or nothing: when some of the Secrets exist already, nothing is created (delete them, or create the rest by
# hand with the same values).
set -euo pipefail

NS=${1:?usage: create-secrets.sh NAMESPACE   (dev: kubeflow, prod: stgt)}
KUBECTL=${KUBECTL:-kubectl}
SECRETS=(stgt-postgres stgt-s3 stgt-seaweedfs-s3 stgt-mlflow-auth stgt-mlflow)

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

PG_USER=${PG_USER:-mlflow}
PG_PASSWORD=${PG_PASSWORD:-$(random_hex 24)}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-$(random_hex 10)}
S3_SECRET_KEY=${S3_SECRET_KEY:-$(random_hex 20)}
S3_ENDPOINT=${S3_ENDPOINT-http://stgt-seaweedfs:8333}
MLFLOW_ADMIN_PASSWORD=${MLFLOW_ADMIN_PASSWORD:-$(random_hex 16)}
MLFLOW_PIPELINE_PASSWORD=${MLFLOW_PIPELINE_PASSWORD:-$(random_hex 16)}

# The Postgres user and password go into URIs (MLflow's backend and auth stores) and the S3 keys into JSON:
# characters that would need escaping there are refused rather than escaped.
for name in PG_USER PG_PASSWORD S3_ACCESS_KEY S3_SECRET_KEY MLFLOW_ADMIN_PASSWORD MLFLOW_PIPELINE_PASSWORD; do
  value=${!name}
  if [[ ! $value =~ ^[A-Za-z0-9._~-]+$ ]]; then
    echo "create-secrets.sh: $name may hold only letters, digits and . _ ~ - (it goes into a URI or JSON)" >&2
    exit 2
  fi
  if [[ $value == CHANGE_ME ]]; then
    echo "create-secrets.sh: $name is CHANGE_ME: give a real value, or leave it unset to generate one" >&2
    exit 2
  fi
done

if [[ -z ${DRY_RUN:-} ]]; then
  existing=()
  for secret in "${SECRETS[@]}"; do
    if "$KUBECTL" -n "$NS" get secret "$secret" >/dev/null 2>&1; then existing+=("$secret"); fi
  done
  if (( ${#existing[@]} == ${#SECRETS[@]} )); then
    echo "all stgt Secrets exist in namespace $NS: nothing to do"
    exit 0
  fi
  if (( ${#existing[@]} > 0 )); then
    echo "create-secrets.sh: ${existing[*]} exist(s) in namespace $NS already: values generated now would not" \
         "match theirs; delete them first, or create the rest by hand (infra/README.md)" >&2
    exit 1
  fi
fi

files=$(mktemp -d)
trap 'rm -rf "$files"' EXIT
chmod 700 "$files"
cat > "$files/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = postgresql://$PG_USER:$PG_PASSWORD@stgt-postgres:5432/mlflow_auth
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
cat > "$files/s3.json" <<EOF
{"identities": [{"name": "stgt",
                 "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
                 "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF

create() {  # NAME, then `kubectl create secret generic` arguments
  local name=$1
  shift
  if [[ -n ${DRY_RUN:-} ]]; then
    echo "---"
    "$KUBECTL" create secret generic "$name" -n "$NS" "$@" --dry-run=client -o yaml
  else
    "$KUBECTL" create secret generic "$name" -n "$NS" "$@"
  fi
}

# MLflow's backend store URI is not here: the Deployment composes it from these in the server's environment.
create stgt-postgres --from-literal=POSTGRES_USER="$PG_USER" --from-literal=POSTGRES_PASSWORD="$PG_PASSWORD" \
  --from-literal=POSTGRES_DB=mlflow
# Pipeline tasks (DVC, data) and the MLflow server's artifact store.
create stgt-s3 --from-literal=AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" --from-literal=AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
  --from-literal=AWS_ENDPOINT_URL="$S3_ENDPOINT"
# The bundled SeaweedFS S3 gateway's identities: the same key.
create stgt-seaweedfs-s3 --from-file=s3.json="$files/s3.json"
# The MLflow server's basic-auth app: the admin created on first start, and its user store in Postgres.
create stgt-mlflow-auth --from-literal=MLFLOW_AUTH_ADMIN_USERNAME=admin \
  --from-literal=MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_ADMIN_PASSWORD" --from-file=basic_auth.ini="$files/basic_auth.ini"
# How pipeline tasks log (the `mlflow_secret` pipeline parameter): register this user once the server runs.
create stgt-mlflow --from-literal=MLFLOW_TRACKING_URI=http://stgt-mlflow:5000 \
  --from-literal=MLFLOW_TRACKING_USERNAME=stgt-pipeline --from-literal=MLFLOW_TRACKING_PASSWORD="$MLFLOW_PIPELINE_PASSWORD"

if [[ -z ${DRY_RUN:-} ]]; then
  echo "created ${SECRETS[*]} in namespace $NS; read a value back with e.g."
  echo "  kubectl -n $NS get secret stgt-mlflow-auth -o jsonpath='{.data.MLFLOW_AUTH_ADMIN_PASSWORD}' | base64 -d"
fi
