using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Ferry.Quic.Tests;

/// <summary>The least HTTP/3 (RFC 9114) and QPACK (RFC 9204) needed for one GET: static table only, no dynamic table.</summary>
internal static class Http3Client
{
    private const long FrameData = 0x0;
    private const long FrameHeaders = 0x1;
    private const long FrameSettings = 0x4;
    private const long StreamTypeControl = 0x0;

    /// <summary>Opens the client control stream; it must stay open for the connection's lifetime.</summary>
    public static async Task<QuicStream> OpenControlStreamAsync(QuicConnection connection, CancellationToken ct)
    {
        var control = await connection.OpenUnidirectionalStreamAsync(ct);
        var buffer = new List<byte>();
        WriteVarint(buffer, StreamTypeControl);
        WriteVarint(buffer, FrameSettings);
        WriteVarint(buffer, 0); // empty SETTINGS: QPACK dynamic table capacity stays 0
        await control.WriteAsync(buffer.ToArray(), ct);
        return control;
    }

    /// <summary>Sends GET and returns (status byte of the first field line, body SHA-256, body length).</summary>
    public static async Task<(int Status, byte[] Sha256, long Length)> GetAsync(QuicConnection connection, string authority, string path, CancellationToken ct)
    {
        await using var stream = await connection.OpenBidirectionalStreamAsync(ct);
        var fields = new List<byte> { 0x00, 0x00 }; // Required Insert Count 0, Delta Base 0
        fields.Add(0xC0 | 17);                       // indexed static: :method GET
        fields.Add(0xC0 | 23);                       // indexed static: :scheme https
        WriteLiteralWithStaticName(fields, 0, authority); // :authority
        WriteLiteralWithStaticName(fields, 1, path);      // :path
        var frame = new List<byte>();
        WriteVarint(frame, FrameHeaders);
        WriteVarint(frame, fields.Count);
        frame.AddRange(fields);
        await stream.WriteAsync(frame.ToArray(), completeWrites: true, ct);

        int status = -1;
        long length = 0;
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var chunk = new byte[65536];
        for (int frames = 0; frames < 1_000_000; frames++)
        {
            var type = await ReadVarintAsync(stream, ct);
            if (type is null)
            {
                return (status, hash.GetHashAndReset(), length);
            }

            long remaining = await ReadVarintAsync(stream, ct) ?? throw new InvalidDataException("truncated frame");
            if (type == FrameHeaders && status < 0)
            {
                var block = new byte[remaining];
                await stream.ReadExactlyAsync(block, ct);
                status = DecodeStatus(block);
                continue;
            }

            while (remaining > 0)
            {
                int n = await stream.ReadAsync(chunk.AsMemory(0, (int)Math.Min(chunk.Length, remaining)), ct);
                if (n == 0)
                {
                    throw new InvalidDataException("stream ended inside a frame");
                }

                if (type == FrameData)
                {
                    hash.AppendData(chunk, 0, n);
                    length += n;
                }

                remaining -= n;
            }
        }

        throw new InvalidDataException("too many frames");
    }

    /// <summary>
    /// Answers every request stream with 200 and the same body (the request's QPACK block is not decoded,
    /// which would need Huffman). Peer unidirectional streams (control, QPACK) are drained and ignored.
    /// </summary>
    public static async Task ServeAsync(QuicConnection connection, byte[] body, CancellationToken ct)
    {
        await using var control = await OpenControlStreamAsync(connection, ct);
        var handlers = new List<Task>();
        try
        {
            for (int i = 0; i < 1000; i++)
            {
                var stream = await connection.AcceptStreamAsync(ct);
                handlers.Add(stream.CanWrite ? RespondAsync(stream, body, ct) : DrainAsync(stream, ct));
            }
        }
        catch (QuicException)
        {
            // The client closed the connection: done.
        }

        await Task.WhenAll(handlers.Select(h => h.ContinueWith(static _ => { }, TaskScheduler.Default)));
    }

    private static async Task RespondAsync(QuicStream stream, byte[] body, CancellationToken ct)
    {
        await using (stream)
        {
            _ = await HandshakeTests.ReadAllAsync(stream); // HEADERS of a GET, then FIN
            var head = new List<byte>();
            WriteVarint(head, FrameHeaders);
            WriteVarint(head, 3);
            head.AddRange([0x00, 0x00, 0xC0 | 25]); // prefix, then indexed static :status 200
            WriteVarint(head, FrameData);
            WriteVarint(head, body.Length);
            await stream.WriteAsync(head.ToArray(), ct);
            await stream.WriteAsync(body, completeWrites: true, ct);
        }
    }

    private static async Task DrainAsync(QuicStream stream, CancellationToken ct)
    {
        var buffer = new byte[4096];
        while (await stream.ReadAsync(buffer, ct) > 0)
        {
        }
    }

    private static int DecodeStatus(byte[] block)
    {
        // After the two prefix bytes, servers put :status first; 200 is static index 25 (RFC 9204 Appendix A).
        if (block.Length > 2 && (block[2] & 0xC0) == 0xC0)
        {
            return (block[2] & 0x3F) switch
            {
                24 => 103,
                25 => 200,
                26 => 304,
                27 => 404,
                28 => 503,
                _ => 0,
            };
        }

        return 0;
    }

    private static void WriteLiteralWithStaticName(List<byte> output, int staticIndex, string value)
    {
        // 01NT xxxx: literal with name reference, N=0, T=1 (static), 4-bit prefix index.
        WritePrefixedInt(output, 0x50, 4, staticIndex);
        var bytes = Encoding.ASCII.GetBytes(value);
        WritePrefixedInt(output, 0x00, 7, bytes.Length); // H=0: no Huffman
        output.AddRange(bytes);
    }

    private static void WritePrefixedInt(List<byte> output, byte pattern, int prefixBits, long value)
    {
        long max = (1 << prefixBits) - 1;
        if (value < max)
        {
            output.Add((byte)(pattern | value));
            return;
        }

        output.Add((byte)(pattern | max));
        value -= max;
        while (value >= 128)
        {
            output.Add((byte)((value & 0x7F) | 0x80));
            value >>= 7;
        }

        output.Add((byte)value);
    }

    private static void WriteVarint(List<byte> output, long value)
    {
        Span<byte> b = stackalloc byte[8];
        if (value < 64)
        {
            output.Add((byte)value);
        }
        else if (value < 16384)
        {
            BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)(0x4000 | value));
            output.AddRange(b[..2].ToArray());
        }
        else
        {
            BinaryPrimitives.WriteUInt32BigEndian(b, (uint)(0x80000000 | value));
            output.AddRange(b[..4].ToArray());
        }
    }

    private static async Task<long?> ReadVarintAsync(Stream stream, CancellationToken ct)
    {
        var first = new byte[1];
        if (await stream.ReadAsync(first, ct) == 0)
        {
            return null;
        }

        int length = 1 << (first[0] >> 6);
        long value = first[0] & 0x3F;
        if (length > 1)
        {
            var rest = new byte[length - 1];
            await stream.ReadExactlyAsync(rest, ct);
            foreach (var b in rest)
            {
                value = (value << 8) | b;
            }
        }

        return value;
    }
}
