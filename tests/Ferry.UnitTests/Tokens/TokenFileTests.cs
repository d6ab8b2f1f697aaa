using Ferry.Core.Tokens;

namespace Ferry.UnitTests.Tokens;

public sealed class TokenFileTests
{
    private static TokenFile Sample() => new()
    {
        Kind = "connector",
        Id = "cn_1",
        Name = "c1",
        AccessToken = TokenFormat.New(TokenFormat.AccessPrefix),
        RefreshToken = TokenFormat.New(TokenFormat.RefreshPrefix),
        AccessTokenExpiresAt = DateTimeOffset.UnixEpoch.AddYears(60),
    };

    [Fact]
    public void Saves_owner_only_and_reads_back_the_same_pair()
    {
        var dir = Directory.CreateTempSubdirectory("ferry-unit-").FullName;
        var path = Path.Combine(dir, "t.json");
        var file = Sample();
        file.Save(path);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        Assert.Equal(file, TokenFile.Read(path));

        // Rewriting replaces the whole file and leaves no temporary files behind.
        var rotated = file with { RefreshToken = TokenFormat.New(TokenFormat.RefreshPrefix) };
        rotated.Save(path);
        Assert.Equal(rotated, TokenFile.Read(path));
        Assert.Single(Directory.GetFiles(dir));
    }

    [Theory]
    [InlineData("", "is not valid")]
    [InlineData("{", "is not valid")]
    [InlineData("[]", "is not valid")]
    [InlineData("{\"kind\":\"connector\",\"id\":\"x\",\"accessToken\":\"\",\"refreshToken\":\"r\"}", "lacks the id, access token or refresh token")]
    public void Corrupt_files_give_a_readable_error(string content, string expected)
    {
        var e = Assert.Throws<TokenFileException>(() => TokenFile.Parse(content, "f.json"));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Contains("f.json", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Tokens_are_random_prefixed_and_stored_only_as_hashes()
    {
        var a = TokenFormat.New(TokenFormat.RefreshPrefix);
        var b = TokenFormat.New(TokenFormat.RefreshPrefix);
        Assert.NotEqual(a, b);
        Assert.StartsWith("ferry_rt_", a, StringComparison.Ordinal);
        Assert.Equal(64, TokenFormat.Hash(a).Length);
        Assert.DoesNotContain(a, TokenFormat.Hash(a), StringComparison.Ordinal);
        Assert.Equal(TokenFormat.Hash(a), TokenFormat.Hash(a));
    }
}
