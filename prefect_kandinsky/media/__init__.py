"""Bytes in and out, on top of ``gateway``: everything that reads or writes media.

``images`` checks an input image before anything is paid, ``uploads`` puts private inputs
(local files, ``s3://`` objects) where the gateway can fetch them, ``storage`` streams a
finished video into a local folder, an S3 bucket or any Prefect filesystem, and ``previews``
turns a video into the small pictures an artifact shows. PyAV, prefect_aws and boto3 load only
inside the functions that need them.
"""
