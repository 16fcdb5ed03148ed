module github.com/example/ai-infra-matrix/backend

go 1.25
