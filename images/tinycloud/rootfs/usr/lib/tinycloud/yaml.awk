# Flatten the small YAML subset found in NoCloud meta-data and cloud-config into one line per value:
#   <dotted.path> TAB <kind> TAB <value>
# kind: "s" scalar (key: value), "i" list item (- value, or one element of [a, b]), "b" one line of a
# literal/folded block scalar (key: | ...). Quoted scalars are unquoted and unescaped; a list item that is
# itself a flow list ([ls, -l], as in runcmd) becomes one shell-quoted command line.
# Not handled, on purpose: anchors, multi-line quoted scalars, flow mappings, JSON documents.
# Written for busybox awk (no gensub, no 3-argument match).

function indent_of(s) {
    match(s, /^ */)
    return RLENGTH
}

function path_to(n,    p, j) {
    p = ""
    for (j = 1; j <= n; j++)
        p = (p == "" ? keys[j] : p "." keys[j])
    return p
}

function emit(p, kind, v) {
    gsub(/\n/, " ", v)
    printf "%s\t%s\t%s\n", p, kind, v
}

# 4-hex-digit escape as UTF-8 bytes (BMP only).
function utf8(hex,    n, j, c) {
    n = 0
    for (j = 1; j <= 4; j++) {
        c = index("0123456789abcdef", tolower(substr(hex, j, 1)))
        if (c == 0)
            return "?"
        n = n * 16 + c - 1
    }
    if (n < 128)
        return sprintf("%c", n)
    if (n < 2048)
        return sprintf("%c%c", 192 + int(n / 64), 128 + n % 64)
    return sprintf("%c%c%c", 224 + int(n / 4096), 128 + int(n / 64) % 64, 128 + n % 64)
}

# Parses one scalar at the start of s. Sets REST to what follows it and returns the value.
function scalar(s,    out, c, q, j) {
    sub(/^[ ]+/, "", s)
    q = substr(s, 1, 1)
    if (q == "\"") {
        out = ""
        for (j = 2; j <= length(s); j++) {
            c = substr(s, j, 1)
            if (c == "\"")
                break
            if (c == "\\") {
                j++
                c = substr(s, j, 1)
                if (c == "n") c = "\n"
                else if (c == "t") c = "\t"
                else if (c == "r") c = ""
                else if (c == "0") c = ""
                else if (c == "u") { c = utf8(substr(s, j + 1, 4)); j += 4 }
                # \" \\ \/ and any other escaped character stand for themselves
            }
            out = out c
        }
        REST = substr(s, j + 1)
        return out
    }
    if (q == "'") {
        out = ""
        for (j = 2; j <= length(s); j++) {
            c = substr(s, j, 1)
            if (c == "'") {
                if (substr(s, j + 1, 1) != "'")
                    break
                j++
            }
            out = out c
        }
        REST = substr(s, j + 1)
        return out
    }
    REST = ""
    sub(/[ ]+#.*$/, "", s)
    sub(/[ ]+$/, "", s)
    if (s == "~" || s == "null")
        s = ""
    return s
}

# Splits a one-line flow sequence "[a, 'b c', "d"]" into items[1..n]; returns n.
function flow_items(s, items,    n, v) {
    sub(/^[ ]*\[/, "", s)
    n = 0
    while (1) {
        sub(/^[ ]+/, "", s)
        if (s == "" || substr(s, 1, 1) == "]")
            break
        if (substr(s, 1, 1) == "\"" || substr(s, 1, 1) == "'") {
            v = scalar(s)
            s = REST
        } else {
            match(s, /^[^],]*/)
            v = substr(s, 1, RLENGTH)
            s = substr(s, RLENGTH + 1)
            sub(/[ ]+$/, "", v)
        }
        items[++n] = v
        sub(/^[ ]*,?/, "", s)
    }
    return n
}

function shell_quote(s) {
    gsub(/'/, "'\\''", s)
    return "'" s "'"
}

BEGIN {
    depth = 0       # keys[1..depth] with their indents ind[1..depth]
    block = 0       # inside a block scalar
}

{
    sub(/\r$/, "")
    line = $0
    n = indent_of(line)
    if (block) {
        if (line ~ /^[ ]*$/) {
            if (bindent >= 0)
                emit(bpath, "b", "")
            next
        }
        if (n > bparent) {
            if (bindent < 0)
                bindent = n
            emit(bpath, "b", substr(line, bindent + 1))
            next
        }
        block = 0
    }
    if (line ~ /^[ ]*(#|$)/ || line ~ /^(---|\.\.\.)[ ]*$/)
        next
    rest = substr(line, n + 1)

    if (rest ~ /^-([ ]|$)/) {
        # A sequence item belongs to the closest key above it; YAML allows "key:\n- item" at equal indent.
        while (depth > 0 && (ind[depth] > n || (ind[depth] == n && !open[depth])))
            depth--
        val = substr(rest, 2)
        sub(/^[ ]+/, "", val)
        if (val ~ /^\[/) {
            count = flow_items(val, items)
            cmd = ""
            for (k = 1; k <= count; k++)
                cmd = cmd (k > 1 ? " " : "") shell_quote(items[k])
            emit(path_to(depth), "i", cmd)
        } else {
            emit(path_to(depth), "i", scalar(val))
        }
        next
    }

    if (match(rest, /^("[^"]*"|'[^']*'|[A-Za-z0-9_.\/-]+)[ ]*:([ ]|$)/)) {
        key = substr(rest, 1, RLENGTH)
        val = substr(rest, RLENGTH + 1)
        sub(/[ ]*:[ ]*$/, "", key)
        gsub(/^["']|["']$/, "", key)
        while (depth > 0 && ind[depth] >= n)
            depth--
        depth++
        keys[depth] = key
        ind[depth] = n
        open[depth] = 0
        p = path_to(depth)
        sub(/^[ ]+/, "", val)
        if (val == "" || val ~ /^#/) {
            open[depth] = 1
        } else if (val ~ /^[|>][-+0-9]*[ ]*(#.*)?$/) {
            block = 1
            bpath = p
            bparent = n
            bindent = -1
        } else if (val ~ /^\[/) {
            count = flow_items(val, items)
            for (k = 1; k <= count; k++)
                emit(p, "i", items[k])
        } else if (val !~ /^\{/) {
            emit(p, "s", scalar(val))
        }
    }
}
