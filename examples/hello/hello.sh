#!/bin/sh
echo "hello from an image built by docker-idpb"
