using System.Text.Json;
using System.Text.Json.Serialization;
using Ferry.Core.Files;

namespace Ferry.Core.Tokens;

/// <summary>What a daemon (connector or relay) holds to prove who it is: printed by provisioning, read by --tokens, rewritten on every rotation.</summary>
public sealed record TokenFile
{
    /// <summary>"connector" or "relay".</summary>
    public required string Kind { get; init; }
    public required string Id { get; init; }
    public string? Name { get; init; }
    public string? Network { get; init; }
    public string? Controller { get; init; }
    public string? ControllerFingerprint { get; init; }
    public required string AccessToken { get; init; }
    public DateTimeOffset AccessTokenExpiresAt { get; init; }
    public required string RefreshToken { get; init; }

    public static TokenFile Read(string path)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (FileNotFoundException)
        {
            throw new TokenFileException($"tokens file '{path}' does not exist; write the output of 'ferry admin connector provision --json' there");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new TokenFileException($"cannot read tokens file '{path}': {e.Message}");
        }
        return Parse(text, path);
    }

    public static TokenFile Parse(string text, string source)
    {
        TokenFile? file;
        try
        {
            file = JsonSerializer.Deserialize(text, CoreJsonContext.Default.TokenFile);
        }
        catch (JsonException e)
        {
            throw new TokenFileException($"tokens file '{source}' is not valid: {e.Message}; provision the connector again or restore the file");
        }
        if (file is null || string.IsNullOrWhiteSpace(file.AccessToken) || string.IsNullOrWhiteSpace(file.RefreshToken) || string.IsNullOrWhiteSpace(file.Id))
        {
            throw new TokenFileException($"tokens file '{source}' is not valid: it lacks the id, access token or refresh token");
        }
        return file;
    }

    /// <summary>Writes the file so a kill at any instant leaves either the old pair or the new one, readable only by its owner.</summary>
    public void Save(string path) => AtomicFile.WriteAllText(path, ToJson(), ownerOnly: true);

    public string ToJson() => JsonSerializer.Serialize(this, CoreJsonContext.Default.TokenFile);
}

/// <summary>A tokens file that is missing, unreadable or malformed.</summary>
public sealed class TokenFileException(string message) : Exception(message);

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(TokenFile))]
internal sealed partial class CoreJsonContext : JsonSerializerContext;
