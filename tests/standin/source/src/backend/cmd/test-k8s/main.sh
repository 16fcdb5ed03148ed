# ./test-k8s: Kubernetes connectivity check (upstream cmd/test-k8s/main.go).
echo "test-k8s ${APP_VERSION}: no Kubernetes cluster configured (stand-in)"
