module ai-infra-matrix

go 1.25
