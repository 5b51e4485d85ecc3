#!/bin/sh
# Start the MLflow tracking server with basic auth. The auth config file cannot read the
# environment, so it is written here from it, into a file only this user can read.
set -eu
: "${MLFLOW_DB_PASSWORD:?}" "${MLFLOW_AUTH_ADMIN_PASSWORD:?}" "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}"
case "$MLFLOW_DB_PASSWORD $MLFLOW_AUTH_ADMIN_PASSWORD $MLFLOW_FLASK_SERVER_SECRET_KEY ${AWS_SECRET_ACCESS_KEY:-}" in
  *CHANGE_ME*) echo "mlflow: replace every CHANGE_ME in infra/mlflow/.env (see env.example)" >&2; exit 2 ;;
esac
PGHOST="${PGHOST:-postgres}" PGPORT="${PGPORT:-5432}"
umask 077
mkdir -p "$HOME/auth"
cat > "$HOME/auth/basic_auth.ini" <<INI
[mlflow]
# READ: users see every experiment and write only to those they created or were granted
# EDIT on (infra/README.md: granting the lab's writers); EDIT here would let anyone edit anything.
default_permission = ${MLFLOW_DEFAULT_PERMISSION:-READ}
database_uri = postgresql+psycopg://mlflow:${MLFLOW_DB_PASSWORD}@${PGHOST}:${PGPORT}/mlflow_auth
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$HOME/auth/basic_auth.ini"

set -- mlflow server --app-name basic-auth \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_LISTEN_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
  --backend-store-uri "postgresql+psycopg://mlflow:${MLFLOW_DB_PASSWORD}@${PGHOST}:${PGPORT}/mlflow" \
  --serve-artifacts --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-s3://mlflow/artifacts}"
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then  # needed once the server is reached by a name or LAN address
  set -- "$@" --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"
fi
exec "$@"
