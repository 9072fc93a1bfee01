"""Every storage error: typed, raised before anything is written, no credentials leaked."""

from __future__ import annotations

import os

import boto3
import numpy as np
import pytest

import jaxwren as jw
from jaxwren.storage.urls import kvstore_spec, parse_url
from tests.conftest import BUCKET, start_moto


def test_url_parsing():
    assert parse_url("s3://bkt/a/b/").url == "s3://bkt/a/b"
    assert parse_url("s3://bkt/a/b").path == "a/b/"
    assert parse_url("memory://x").path == "x/"
    assert parse_url("/tmp/x/").url == "file:///tmp/x"
    assert parse_url("file:///tmp/x").path == "/tmp/x/"
    assert parse_url("gs://bkt/p").bucket == "bkt"
    assert parse_url("rel/dir").path == os.path.abspath("rel/dir") + "/"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://host/x", "unknown scheme 'ftp'"),
        ("s3://bucket-only", "needs a bucket and a prefix"),
        ("s3://B_/x", "not a valid bucket name"),
        ("file://relative/x", "must be absolute"),
        ("memory://", "needs a name"),
        ("", "non-empty string"),
    ],
)
def test_bad_urls(url, match):
    with pytest.raises(jw.UnsupportedURLError, match=match):
        jw.BigMatrix.create(url, (2, 2), (1, 1))


def test_env_resolution_and_override():
    env = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://s3:2"}
    assert jw.StorageConfig().resolve(env).s3_endpoint == "http://s3:2"
    assert jw.StorageConfig().resolve({"AWS_ENDPOINT_URL": "http://a:1"}).s3_endpoint == (
        "http://a:1"
    )
    env = {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}
    assert jw.StorageConfig().resolve(env).s3_region == "eu-west-1"
    assert jw.StorageConfig().resolve({"AWS_DEFAULT_REGION": "us-west-2"}).s3_region == (
        "us-west-2"
    )
    explicit = jw.StorageConfig(s3_endpoint="http://mine:9000", s3_region="r1")
    assert explicit.resolve(env).s3_endpoint == "http://mine:9000"
    assert explicit.resolve(env).s3_region == "r1"
    spec = kvstore_spec(parse_url("s3://bkt/p"), explicit.resolve({}))
    assert spec["endpoint"] == "http://mine:9000" and spec["aws_region"] == "r1"
    assert spec["aws_credentials"] == {"type": "default"}
    spec = kvstore_spec(
        parse_url("s3://bkt/p"), jw.StorageConfig(credentials={"type": "profile", "profile": "m"})
    )
    assert spec["aws_credentials"] == {"type": "profile", "profile": "m"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"s3_endpoint": "localhost:9000"}, "must be an http"),
        ({"credentials": "static"}, "has type 'static'"),
        ({"s3_host_header": "h"}, "needs s3_endpoint"),
        ({"s3_max_retries": 0}, "must be an int >= 1"),
    ],
)
def test_bad_storage_config(kwargs, match):
    with pytest.raises(jw.ConfigError, match=match):
        jw.StorageConfig(**kwargs)


def test_missing_matrix(store):
    with pytest.raises(jw.MatrixNotFoundError, match="no matrix at .*create it with"):
        jw.BigMatrix.open(store.url("absent"), storage=store.config)


def test_create_over_existing(store):
    url = store.url()
    a = jw.from_numpy(np.ones((3, 3)), url, (2, 2), storage=store.config)
    with pytest.raises(jw.MatrixExistsError, match="overwrite=True"):
        jw.BigMatrix.create(url, (5, 5), (2, 2), storage=store.config)
    with pytest.raises(jw.MatrixExistsError, match="overwrite=True"):
        jw.from_numpy(np.zeros((3, 3)), url, (2, 2), storage=store.config)
    np.testing.assert_array_equal(a.numpy(), 1)  # untouched


def test_block_errors(store):
    a = jw.from_numpy(np.ones((5, 5), np.float32), store.url(), (2, 2), storage=store.config)
    with pytest.raises(jw.BlockIndexError, match=r"block index \(3, 0\) is outside"):
        a.get_block(3, 0)
    with pytest.raises(jw.BlockIndexError, match="outside the block grid"):
        a.put_block(np.zeros((2, 2)), 0, -1)
    with pytest.raises(jw.ShapeMismatchError, match=r"shape \(2, 2\), expected \(1, 2\)"):
        a.put_block(np.zeros((2, 2), np.float32), 2, 0)  # edge block is (1, 2)
    with pytest.raises(jw.DTypeMismatchError, match="does not cast safely.*astype"):
        a.put_block(np.zeros((2, 2), np.float64), 0, 0)
    np.testing.assert_array_equal(a.numpy(), 1)  # nothing written


def test_parent_fn_wrong_shape():
    a = jw.BigMatrix.create("memory://pf-bad", (3, 3), (2, 2), parent_fn=lambda m, i, j: 0)
    with pytest.raises(jw.ShapeMismatchError, match=r"parent_fn\(A, 0, 0\)"):
        a.get_block(0, 0)


@pytest.mark.parametrize(
    ("shape", "block", "dtype", "err", "match"),
    [
        ((3,), (1, 1), "float32", jw.ShapeMismatchError, "two positive integers"),
        ((3, 0), (1, 1), "float32", jw.ShapeMismatchError, "two positive integers"),
        ((3, 3), (0, 1), "float32", jw.ShapeMismatchError, "block_shape"),
        ((3, 3), (1, 1), "str", jw.DTypeMismatchError, "not supported"),
    ],
)
def test_bad_create_args(shape, block, dtype, err, match):
    with pytest.raises(err, match=match):
        jw.BigMatrix.create("memory://bad-args", shape, block, dtype)


def test_from_numpy_not_2d():
    with pytest.raises(jw.ShapeMismatchError, match="reshape vectors"):
        jw.from_numpy(np.ones(4), "memory://vec", (2, 2))


def test_missing_bucket(s3_config):
    with pytest.raises(jw.BucketNotFoundError, match="bucket 'no-such-bucket'.*create it"):
        jw.BigMatrix.create("s3://no-such-bucket/x", (2, 2), (1, 1), storage=s3_config)
    with pytest.raises(jw.BucketNotFoundError):
        jw.BigMatrix.open("s3://no-such-bucket/x", storage=s3_config)


def test_refused_credentials_never_leak():
    proc, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        cfg = jw.StorageConfig(s3_endpoint=endpoint, credentials="environment", s3_max_retries=1)
        with pytest.raises(jw.CredentialsError, match="refused the credentials") as info:
            jw.BigMatrix.create(f"s3://{BUCKET}/x", (2, 2), (1, 1), storage=cfg)
        text = str(info.value) + repr(info.value) + repr(cfg)
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text
        assert os.environ["AWS_ACCESS_KEY_ID"] not in text
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        with pytest.raises(Exception, match="InvalidAccessKeyId|403"):
            s3.list_objects_v2(Bucket=BUCKET)  # the server refuses everyone: nothing written
    finally:
        proc.terminate()
        proc.wait(timeout=10)
