"""The write side: conversion of tables, webdataset shards and image folders to .beton parts
(decoded and re-encoded, or JPEGs stored as they are), and the in-place index of webdataset shards.
Imports the shared formats of scan_fast.data; reads stored data only to check what it wrote."""
