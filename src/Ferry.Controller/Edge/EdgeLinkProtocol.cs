using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace Ferry.Controller.Edge;

/// <summary>
/// The few bytes a core and an edge exchange on a link before it carries a daemon's connection. The edge challenges, the
/// core proves it knows the shared edge secret (an HMAC of the challenge: the secret never crosses the wire), and the link
/// then waits until the edge announces a daemon's connection with its address; from there on it carries that connection's
/// bytes unchanged. TLS runs end to end between the daemon and the core, so an edge sees only ciphertext.
/// </summary>
public static class EdgeLinkProtocol
{
    private static readonly byte[] Magic = "FERRYEDG"u8.ToArray();
    private static readonly byte[] Context = "ferry edge link v1"u8.ToArray();
    private const byte Version = 1;
    private const byte Accepted = 1;
    private const byte Connection = 2;

    /// <summary>Bytes of the edge's challenge: magic, version, nonce.</summary>
    public const int ChallengeLength = 8 + 1 + 32;

    /// <summary>Reads the shared edge secret: at least 32 characters, from a file readable only by the controller's user.</summary>
    public static byte[] LoadSecret(string? path)
    {
        if (path is null)
        {
            throw new ArgumentException("--role core and --role edge need --edge-secret-file: the same file of at least 32 random characters on the core and every edge (for example: head -c 32 /dev/urandom | base64 > edge.secret)");
        }
        string text;
        try
        {
            text = File.ReadAllText(path).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"cannot read --edge-secret-file {path}: {e.Message}", e);
        }
        if (text.Length < 32)
        {
            throw new ArgumentException($"--edge-secret-file {path} holds {text.Length} characters; it needs at least 32 random ones (for example: head -c 32 /dev/urandom | base64 > {path})");
        }
        return Encoding.UTF8.GetBytes(text);
    }

    /// <summary>The edge's challenge for a new link.</summary>
    public static byte[] NewChallenge()
    {
        var challenge = new byte[ChallengeLength];
        Magic.CopyTo(challenge, 0);
        challenge[8] = Version;
        RandomNumberGenerator.Fill(challenge.AsSpan(9));
        return challenge;
    }

    /// <summary>The core's answer to <paramref name="challenge"/>; throws when it is not an edge's challenge.</summary>
    public static byte[] Answer(ReadOnlySpan<byte> challenge, byte[] secret)
    {
        if (challenge.Length != ChallengeLength || !challenge[..8].SequenceEqual(Magic))
        {
            throw new InvalidDataException("the address given as an edge does not speak the edge link protocol; give each edge's --link-listen address");
        }
        if (challenge[8] != Version)
        {
            throw new InvalidDataException($"the edge speaks link protocol version {challenge[8]}, this core {Version}; run the same Ferry version on core and edges");
        }
        return Mac(challenge, secret);
    }

    /// <summary>Whether <paramref name="answer"/> proves knowledge of the secret, compared in constant time.</summary>
    public static bool Verify(ReadOnlySpan<byte> challenge, ReadOnlySpan<byte> answer, byte[] secret)
        => answer.Length == 32 && CryptographicOperations.FixedTimeEquals(Mac(challenge, secret), answer);

    private static byte[] Mac(ReadOnlySpan<byte> challenge, byte[] secret)
    {
        byte[] message = [.. Context, .. challenge[9..]];
        return HMACSHA256.HashData(secret, message);
    }

    /// <summary>The edge's word that the answer was right.</summary>
    public static ReadOnlySpan<byte> AcceptedByte => [Accepted];

    /// <summary>The edge's announcement of a daemon's connection from <paramref name="remote"/>.</summary>
    public static byte[] Announce(IPEndPoint remote)
    {
        var address = Encoding.ASCII.GetBytes(remote.ToString());
        return [Connection, (byte)address.Length, .. address];
    }

    /// <summary>Reads exactly <paramref name="buffer"/>.Length bytes; false when the peer closed first.</summary>
    public static async Task<bool> ReadExactlyAsync(Socket socket, Memory<byte> buffer, CancellationToken ct)
    {
        var read = 0;
        while (read < buffer.Length)
        {
            var n = await socket.ReceiveAsync(buffer[read..], SocketFlags.None, ct);
            if (n == 0)
            {
                return false;
            }
            read += n;
        }
        return true;
    }

    /// <summary>On the core: waits for the accepted byte; false when the edge closed (a wrong secret).</summary>
    public static async Task<bool> ReadAcceptedAsync(Socket socket, CancellationToken ct)
    {
        var one = new byte[1];
        return await ReadExactlyAsync(socket, one, ct) && one[0] == Accepted;
    }

    /// <summary>On the core: waits for the edge to announce a connection, and returns the daemon's address; null when the link closed.</summary>
    public static async Task<IPEndPoint?> ReadAnnouncementAsync(Socket socket, CancellationToken ct)
    {
        var head = new byte[2];
        if (!await ReadExactlyAsync(socket, head, ct))
        {
            return null;
        }
        if (head[0] != Connection)
        {
            throw new InvalidDataException($"unexpected byte {head[0]} on an idle edge link");
        }
        var address = new byte[head[1]];
        if (!await ReadExactlyAsync(socket, address, ct))
        {
            return null;
        }
        return IPEndPoint.TryParse(Encoding.ASCII.GetString(address), out var endpoint)
            ? endpoint
            : throw new InvalidDataException("the edge announced a connection from an address that does not parse");
    }

    /// <summary>Keepalive on links, so one whose other end vanished without a word (a cut cable, not a crash) is noticed.</summary>
    public static void EnableKeepAlive(Socket socket)
    {
        socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, 15);
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, 5);
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, 3);
        socket.NoDelay = true;
    }
}
