#!/usr/bin/env python3
"""Uploads a file to an S3-protocol server for ci/bench (boto3, which moto
installs). Usage: s3put.py ENDPOINT BUCKET KEY FILE [--create-bucket]"""
import sys

import boto3

endpoint, bucket, key, path = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
if "--create-bucket" in sys.argv:
    s3.create_bucket(Bucket=bucket)
with open(path, "rb") as f:
    s3.put_object(Bucket=bucket, Key=key, Body=f, ChecksumAlgorithm="SHA256")
