/* Decodes one rectangle of a JPEG with libjpeg-turbo, at a DCT scale of 1/1 to 1/8.
 *
 * Rows below the rectangle are never read, rows above it are skipped without inverse
 * DCT or colour conversion (jpeg_skip_scanlines), and columns outside it are not
 * transformed (jpeg_crop_scanline): a random crop costs roughly its own area rather
 * than the whole image. Pillow decodes whole images only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <jpeglib.h>
#include <jerror.h>

struct region_error {
    struct jpeg_error_mgr base;
    jmp_buf escape;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct region_error *err = (struct region_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->escape, 1);
}

/* Corrupt-data warnings are not fatal, as in Pillow, but running out of data is: libjpeg
 * would fill the rest with grey, where Pillow reports a truncated file. */
static void on_message(j_common_ptr cinfo, int level) {
    if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF)
        on_error(cinfo);
}

static PyObject *UnsupportedColour;

static PyObject *decode_region(PyObject *self, PyObject *args) {
    Py_buffer data;
    int left, top, width, height, denom;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*iiiii", &data, &left, &top, &width, &height, &denom))
        return NULL;
    if (denom != 1 && denom != 2 && denom != 4 && denom != 8) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "scale denominator must be 1, 2, 4 or 8, not %d", denom);
    }
    if (width < 1 || height < 1 || left < 0 || top < 0) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "bad region %d,%d %dx%d", left, top, width, height);
    }

    struct jpeg_decompress_struct cinfo;
    struct region_error err;
    /* volatile: read after a longjmp back into this frame */
    PyObject *volatile rows = NULL; /* the decoded RGBX rows, a bytes object written in place */
    int unsupported = 0;
    JDIMENSION out_left = 0, out_width = 0, out_top = 0, out_height = 0;

    cinfo.err = jpeg_std_error(&err.base);
    err.base.error_exit = on_error;
    err.base.emit_message = on_message;
    err.message[0] = 0;

    Py_BEGIN_ALLOW_THREADS
    if (setjmp(err.escape) == 0) {
        jpeg_create_decompress(&cinfo);
        jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
        jpeg_read_header(&cinfo, TRUE);
        if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
            unsupported = 1;
        } else {
            /* RGBX is Pillow's own layout for RGB: the rows become an image without a copy */
            cinfo.out_color_space = JCS_EXT_RGBX;
            cinfo.scale_num = 1;
            cinfo.scale_denom = (unsigned int)denom;
            jpeg_start_decompress(&cinfo);
            JDIMENSION full_w = cinfo.output_width, full_h = cinfo.output_height;
            /* the region in output (scaled) pixels, clipped to the image */
            JDIMENSION x0 = (JDIMENSION)left / denom, y0 = (JDIMENSION)top / denom;
            JDIMENSION x1 = ((JDIMENSION)left + (JDIMENSION)width + denom - 1) / denom;
            JDIMENSION y1 = ((JDIMENSION)top + (JDIMENSION)height + denom - 1) / denom;
            if (x1 > full_w) x1 = full_w;
            if (y1 > full_h) y1 = full_h;
            if (x0 >= x1) x0 = x1 > 0 ? x1 - 1 : 0;
            if (y0 >= y1) y0 = y1 > 0 ? y1 - 1 : 0;
            /* The outermost rows and columns of a partial decode lack their neighbours for
             * chroma upsampling; one more on each side keeps the asked-for pixels exactly
             * those of a full decode. */
            if (x0 > 0) x0--;
            if (y0 > 0) y0--;
            if (x1 < full_w) x1++;
            if (y1 < full_h) y1++;
            out_left = x0;
            out_width = x1 - x0;
            /* widens the columns to iMCU boundaries; out_left/out_width say where they fall */
            if (out_width < full_w)
                jpeg_crop_scanline(&cinfo, &out_left, &out_width);
            out_top = y0;
            out_height = y1 - y0;
            if (out_top > 0)
                jpeg_skip_scanlines(&cinfo, out_top);
            size_t stride = (size_t)out_width * 4;
            /* Decoding straight into the bytes object spares a copy of every pixel; creating
             * it needs the interpreter for a moment. */
            Py_BLOCK_THREADS
            rows = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(stride * out_height));
            Py_UNBLOCK_THREADS
            if (rows != NULL) { /* else MemoryError is set */
                unsigned char *pixels = (unsigned char *)PyBytes_AS_STRING(rows);
                JDIMENSION row = 0;
                while (row < out_height) {
                    JSAMPROW rowp = pixels + stride * row;
                    row += jpeg_read_scanlines(&cinfo, &rowp, 1);
                }
            }
        }
        jpeg_destroy_decompress(&cinfo);
    } else {
        jpeg_destroy_decompress(&cinfo);
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&data);
    if (err.message[0]) {
        Py_XDECREF(rows);
        return PyErr_Format(PyExc_ValueError, "JPEG: %s", err.message);
    }
    if (unsupported)
        return PyErr_Format(UnsupportedColour, "CMYK/YCCK JPEG");
    if (rows == NULL)
        return NULL; /* PyBytes_FromStringAndSize set MemoryError */
    return Py_BuildValue("(NIIII)", rows, out_left, out_top, out_width, out_height);
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS,
     "decode_region(data, left, top, width, height, scale_denom) -> (rgbx, x, y, w, h)\n\n"
     "Decodes the rectangle (left, top, width, height), in full-size pixels, of the JPEG in\n"
     "`data` at 1/scale_denom size. Returns RGBX rows (X = 255) and where they lie in the\n"
     "scaled image: x, y, w, h (columns are widened to the JPEG's block boundaries)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg_region", NULL, -1, methods};

PyMODINIT_FUNC PyInit__jpeg_region(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    UnsupportedColour = PyErr_NewException("_jpeg_region.UnsupportedColour", PyExc_ValueError, NULL);
    if (UnsupportedColour == NULL || PyModule_AddObject(m, "UnsupportedColour", UnsupportedColour) < 0)
        return NULL;
    return m;
}
