#!/bin/sh
# One-shot initialisation (stand-in): would migrate the database.
backend
echo "init done"
exit 0
