# Split user-data into parts: awk -v out=DIR -v prefix=P -f mime.awk FILE
# Writes each part's body to DIR/P<NNN> (without the line break before the next delimiter, which RFC 2046
# counts as part of the delimiter) and prints one manifest line per part:
#   <file> TAB <content-type> TAB <transfer-encoding> TAB <filename>
# Input that is not MIME (a plain "#cloud-config" or "#!" script) is one part with an empty type, to be sniffed
# by its first line. A part that is itself multipart/* is written with its headers, so the caller can split it
# again. Decoding (base64) is left to the caller. Written for busybox awk.

function lower(s) { return tolower(s) }

# Value of parameter `name` in a header value such as `multipart/mixed; boundary="abc"`.
function param(value, name,    v, i) {
    i = index(lower(value), name "=")
    if (i == 0)
        return ""
    v = substr(value, i + length(name) + 1)
    if (substr(v, 1, 1) == "\"") {
        v = substr(v, 2)
        return substr(v, 1, index(v, "\"") - 1)
    }
    match(v, /^[^; \t]*/)
    return substr(v, 1, RLENGTH)
}

function media_type(value) {
    sub(/;.*/, "", value)
    gsub(/[ \t]/, "", value)
    return lower(value)
}

# Stores one header line (already unfolded) into hdr_type / hdr_enc / hdr_name.
function take_header(h,    name, value) {
    name = lower(substr(h, 1, index(h, ":") - 1))
    value = substr(h, index(h, ":") + 1)
    sub(/^[ \t]+/, "", value)
    if (name == "content-type") {
        hdr_ctype = value
        hdr_type = media_type(value)
    } else if (name == "content-transfer-encoding") {
        hdr_enc = lower(value)
        gsub(/[ \t]/, "", hdr_enc)
    } else if (name == "content-disposition") {
        hdr_name = param(value, "filename")
    }
}

function reset_headers() {
    hdr_ctype = hdr_type = hdr_enc = hdr_name = ""
    pending = ""
    raw = ""
}

function open_part(type, enc, name) {
    nparts++
    file = out "/" prefix sprintf("%03d", nparts)
    nlines = 0
    printf "%s\t%s\t%s\t%s\n", file, type, enc, name
    printf "" > file
    if (type ~ /^multipart\//)
        printf "%s\n", raw > file   # keep its headers: the caller splits it again
}

# Line breaks are written before each line, so the one preceding a delimiter is left out.
function body_line(s) {
    printf "%s%s", (nlines++ ? "\n" : ""), s > file
}

# close_part(1) at the end of the input: that part's last line keeps its line break.
function close_part(at_eof) {
    if (file != "") {
        if (at_eof && nlines)
            printf "\n" > file
        close(file)
    }
    file = ""
}

BEGIN {
    state = "top"   # top: headers of the whole document; hdr: headers of a part; body; done
    nparts = 0
    file = ""
    reset_headers()
}

{ sub(/\r$/, "") }

state == "top" {
    if (NR == 1 && $0 !~ /^[A-Za-z][A-Za-z0-9-]*:/) {
        state = "plain"
        open_part("", "", "")
        body_line($0)
        next
    }
    if ($0 ~ /^[ \t]/ && pending != "") {
        pending = pending " " substr($0, 2)
        next
    }
    if (pending != "")
        take_header(pending)
    pending = ""
    if ($0 != "") {
        pending = $0
        next
    }
    # End of the document headers.
    if (hdr_type ~ /^multipart\//) {
        boundary = param(hdr_ctype, "boundary")
        state = "preamble"
    } else {
        state = "body"
        open_part(hdr_type, hdr_enc, hdr_name)
    }
    next
}

state == "plain" { body_line($0); next }

# A delimiter line: "--boundary" starts a part, "--boundary--" ends the multipart.
(state == "preamble" || state == "body" || state == "hdr") && boundary != "" && substr($0, 1, 2 + length(boundary)) == "--" boundary {
    tail = substr($0, 3 + length(boundary))
    if (tail ~ /^--/) {
        close_part()
        state = "done"
        next
    }
    if (tail ~ /^[ \t]*$/) {
        close_part()
        reset_headers()
        state = "hdr"
        next
    }
}

state == "hdr" {
    raw = raw (raw == "" ? "" : "\n") $0
    if ($0 ~ /^[ \t]/ && pending != "") {
        pending = pending " " substr($0, 2)
        next
    }
    if (pending != "")
        take_header(pending)
    pending = ""
    if ($0 != "") {
        pending = $0
        next
    }
    state = "body"
    open_part(hdr_type == "" ? "text/plain" : hdr_type, hdr_enc, hdr_name)
    next
}

state == "body" && file != "" { body_line($0); next }

END {
    if (state == "top") {
        # Headers only, or an empty document.
        if (pending != "")
            take_header(pending)
        if (NR > 0 && hdr_type !~ /^multipart\//)
            open_part(hdr_type, hdr_enc, hdr_name)
    }
    close_part(1)
}
