"""Offline replay of ROS bags (ROS 1 ``.bag``, ROS 2 sqlite3 ``.db3`` and ``.mcap``) through a segood model.

* :mod:`segood.ros.pointcloud2` decodes and encodes ``sensor_msgs/PointCloud2`` (any field layout).
* :mod:`segood.ros.bagio` opens, lists and writes bags of every format (pure Python, ``rosbags``).
* :mod:`segood.ros.camera` decodes images, reads calibration and pairs clouds with images in time.
* :mod:`segood.ros.frames` turns a bag topic into :class:`segood.data.scan.Scan` records (viewer, replay).
* :mod:`segood.ros.replay` the replay loop; :mod:`segood.ros.export` writes sensor frames to a bag.

Nothing here needs a ROS installation.
"""
