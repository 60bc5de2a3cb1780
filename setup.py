from setuptools import find_packages, setup

setup(
    name="cloudshell-fog",
    version="0.1.0",
    description="Browser and terminal shell gateway with fog-first placement",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # twisted.plugins is a namespace directory shared with Twisted itself: it is
    # listed explicitly (find_packages cannot see it) and has no __init__.py,
    # or installing us would overwrite Twisted's own (STACK-NOTES section 1).
    packages=find_packages(include=["cloudshell_fog", "cloudshell_fog.*"])
    + ["twisted.plugins"],
    package_data={"cloudshell_fog": ["defaults/*.yaml", "web/openapi.yaml", "web/static/*",
                                      "web/static/vendor/*", "web/static/vendor/*/*"]},
    install_requires=[
        "twisted[conch,tls]",
        "autobahn[twisted]",
        "pyjwt[crypto]>=2.10.1",  # iat checks; 2.10.0 matched issuers by substring
        "pyyaml",
        "treq",
        "prometheus_client",
    ],
    entry_points={"console_scripts": ["cloudshell = cloudshell_fog.client:main"]},
    extras_require={
        "test": [
            "pytest",
            "pytest-twisted",
            "websockets",
            "hypothesis",
            "pytest-timeout",
            "wheel",  # the packaging test builds a wheel offline
            "schemathesis",
            "pexpect",
            "playwright",  # drives Debian's /usr/bin/chromium; no browser download
        ],
    },
)
