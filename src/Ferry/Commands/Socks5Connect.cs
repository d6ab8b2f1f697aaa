using System.Buffers.Binary;
using System.Text;

namespace Ferry.Cli.Commands;

/// <summary>The client half of a SOCKS5 CONNECT (RFC 1928, no authentication), for 'ferry client connect'.</summary>
internal static class Socks5Connect
{
    public static async Task HandshakeAsync(Stream stream, string host, int port, CancellationToken ct)
    {
        await stream.WriteAsync(new byte[] { 5, 1, 0 }, ct);
        var choice = new byte[2];
        await stream.ReadExactlyAsync(choice, ct);
        if (choice[0] != 5 || choice[1] != 0)
        {
            throw new CliException("the client's SOCKS5 proxy refused the handshake");
        }
        var name = Encoding.ASCII.GetBytes(host);
        if (name.Length is 0 or > 255)
        {
            throw new CliException($"host '{host}' must be 1 to 255 characters", 2);
        }
        var request = new byte[7 + name.Length];
        request[0] = 5;
        request[1] = 1;
        request[3] = 3;
        request[4] = (byte)name.Length;
        name.CopyTo(request, 5);
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(5 + name.Length), (ushort)port);
        await stream.WriteAsync(request, ct);
        var head = new byte[4];
        await stream.ReadExactlyAsync(head, ct);
        var addressLength = head[3] switch
        {
            1 => 4,
            4 => 16,
            3 => await ReadByteAsync(stream, ct),
            _ => throw new CliException("the client's SOCKS5 proxy sent a malformed reply"),
        };
        await stream.ReadExactlyAsync(new byte[addressLength + 2], ct);
        if (head[1] != 0)
        {
            throw new CliException($"{host}:{port} refused: {Describe(head[1])} (see the client's log for the reason)");
        }
    }

    private static async Task<int> ReadByteAsync(Stream stream, CancellationToken ct)
    {
        var one = new byte[1];
        await stream.ReadExactlyAsync(one, ct);
        return one[0];
    }

    private static string Describe(byte code) => code switch
    {
        2 => "not allowed by policy, or not a resource",
        3 => "network unreachable",
        4 => "host unreachable or name not found",
        5 => "connection refused",
        6 => "timed out",
        _ => $"SOCKS5 error {code}",
    };
}
