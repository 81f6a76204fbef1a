"""Language-guided object localisation for grasping: MobileSAM proposals scored by TinyCLIP.

Layers, each a subpackage, importing only the ones listed before it:
``core`` (numpy/OpenCV) <- ``models`` (torch) <- ``runtime`` <- ``pipeline`` (``Locator``)
<- ``backends`` <- ``service`` <- ``ros`` (rclpy) and ``tools`` (CLI, demo).
Nothing is imported or loaded here.
"""
# colcon installs the generated messages (``vlm_grasp_locator.msg``) into the
# workspace's site-packages, while a developer may import the Python sources from
# the repository: extend_path lets both directories serve one package.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
