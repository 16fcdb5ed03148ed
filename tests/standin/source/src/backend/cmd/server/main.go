package main

import "fmt"

func main() { fmt.Println("ai-infra-backend") }
