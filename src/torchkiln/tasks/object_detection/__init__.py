"""Object detection: images with boxes (COCO, Pascal VOC, YOLO, CSV) -> a detector that draws them."""
